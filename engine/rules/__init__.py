"""The rule engine (stage 4): route files in, a compiled ruleset, pure decisions out.

``model`` (the route file schema), ``match`` (match trees), ``loader`` (the routes folder into a
:class:`~engine.rules.ruleset.Ruleset`, every problem with file, line and key path) and
``ruleset`` (evaluation: ``Ruleset.evaluate(kind, subject) -> list[Decision]`` and the traced
``explain`` for dry runs). Rules are data: nothing in a route file is ever executed. This
package must not read the store, the spool or the clock, and must not send anything; the
pipeline (:mod:`engine.pipeline`) turns decisions into outbox rows.
"""
