"""The broker side: the Celery app (configuration only) and publishing chunk ids. It never
touches the database; its callers hand it what to send."""
