"""What one technology's broker and result backend share; imports neither role."""
