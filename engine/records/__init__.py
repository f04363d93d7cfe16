"""The records the worklist and procedure stages and the store all speak, kept below all three.

``worklist`` (the worklist item, its status and its stored form), ``procedure_step`` (the
performed procedure step and what a checked N-CREATE / N-SET commits) and ``worklist_criteria``
(the constraints a worklist query puts on indexed columns). Plain frozen data only: the rules
over it (status life cycle, MPPS checks, C-FIND matching and answers) stay in
:mod:`engine.worklist` and :mod:`engine.procedure`, and nothing here may import the store, a
stage or the network. Import the modules themselves; this file stays empty.
"""
