"""The HTTP ingestor (webhook): FastAPI on uvicorn."""
