"""Reference solutions of the course exercises, one module per chapter.

Trusted side only: these modules are never rendered in the book and never shipped
to students. Each module defines ``LEAK_MARKER``, a string that must never appear
in anything students receive (the built book, the released notebooks, feedback).
"""

CHAPTERS = (
    "ch01_seq2seq",
    "ch02_attention",
    "ch03_self_attention",
    "ch04_masking",
    "ch05_multihead",
    "ch06_transformer",
    "ch07_vit",
)
