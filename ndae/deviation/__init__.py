"""Deviation of a subject from the normative model: scores (standardised cosine, z, Mahalanobis;
`deviation_table` is the deviations.csv contract) and image-space maps (`maps`)."""
