"""The checks kit: what a chapter's battery and known mistakes are written with."""
