"""Test helpers shared by integration and scenario tests.

``dicomgen`` builds small DICOM instances and Part 10 files; ``proc`` runs radflow as a real
subprocess on free loopback ports and runs DCMTK's command-line tools against it.
"""
