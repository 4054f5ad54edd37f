"""The HTTP API (`batchq serve`): OpenAI's Files and Batches API, so the official `openai`
client works against batchq with only its base_url changed.

  app       the FastAPI application: routers, error shapes, metrics
  auth      API keys (the tenant of each request) and requests-per-minute limits
  files     /v1/files: streamed uploads with limits, listing, content, deletion
  batches   /v1/batches: create, list, retrieve, cancel; retry and partial results
  objects   batchq's values in OpenAI's shapes
  upload    the multipart parser that writes the file part as it arrives
  errors    OpenAI's error shape for every failure
  metrics   Prometheus metrics of the API itself
"""
