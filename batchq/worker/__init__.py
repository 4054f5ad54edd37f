"""The worker: one process, one variant, one GPU, one loaded model.

  boot        profile and options, GPU pinning, model load, Celery's loop
  task        the Celery task, registered here (the queue package only configures the app)
  chunk_run   one chunk from claim to finish, batch by batch
  leases      the running chunk's lease, renewed from a thread; the shutdown flag
  sweep       re-queues expired chunks and re-sends lost messages, every half lease
  inline      `batchq run`: the same chunk path inside the submitting process
"""
