"""Analysis stage: inspect logs -> tidy table (``results``), bootstrap intervals and Holm
correction (``stats``), persona classification per docs/protocol.md section 4 (``persona``)."""
