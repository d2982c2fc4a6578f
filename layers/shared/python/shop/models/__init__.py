"""pydantic models at every boundary. Money is always integer minor units."""
