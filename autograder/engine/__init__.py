"""The grading engine: read notebooks, grade every submission, write grades and reports."""
