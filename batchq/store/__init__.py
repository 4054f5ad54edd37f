"""The database: the truth about every job, chunk and line.

  database, migrate, sessions   engines, the schema's migration state, transactions
  models                        the tables, with enum-typed states (batchq.states)
  intake                        a new job's rows, in one transaction
  transitions                   every change of a job's, chunk's or line's state (one owner)
  reads, stats, views           reads that return frozen values
"""
