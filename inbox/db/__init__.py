"""Database access: SQL files, connections, the embedded server and migrations."""
