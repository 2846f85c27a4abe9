"""The PostgreSQL store (psycopg 3): see store.py."""
