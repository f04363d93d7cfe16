"""radflow: an asyncio modality-workflow integration engine for hospital radiology.

The package is laid out by pipeline stage (see DESIGN.md): ``ingress`` takes protocol input and
answers only after ``durable`` has made it safe; ``bus`` carries past-tense ``events``; ``rules``,
``morph``, ``pipeline`` and ``egress`` decide and deliver. This module only exposes the version.
"""

__version__ = "0.1.0"
