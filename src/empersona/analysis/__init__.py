"""Analysis stage: inspect logs -> tidy table (``results``), bootstrap intervals and Holm
correction (``stats``), persona classification per PROTOCOLS.md section 4 (``persona``)."""
