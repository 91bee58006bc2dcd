"""A teacher-signal cache: the teacher's outputs stored per training example, read instead of
running the teacher."""
