"""Scheduled document processing: `batchq schedule …` and `batchq beat`.

  timing     cron in an IANA zone, or an interval; the scheduled times between two moments
  planning   what a tick does with due times: on time, catch-up, missed (pure, clock passed in)
  templates  sandboxed Jinja2 prompt templates, checked when a schedule is added
"""
