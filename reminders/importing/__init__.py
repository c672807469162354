"""Getting records in: CSV import and sync from the clinic's own database."""
