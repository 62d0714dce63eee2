"""End-to-end tests: real uvicorn processes over throwaway PostgreSQL and Redis servers."""
