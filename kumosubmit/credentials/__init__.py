"""The credential store: SMTP logins with argon2id hashes."""
