"""What one technology's broker and result backend share; knows neither role."""
