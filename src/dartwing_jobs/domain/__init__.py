"""The pure domain: statuses, transitions, hashing, validation, errors. No I/O here."""
