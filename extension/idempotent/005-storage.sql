-- Model weights (model_chunks) and a job's checkpoints (job_checkpoints) are large values,
-- written and deleted whole: a model rebuilt or dropped, a version pruned, a checkpoint
-- replaced every epoch. Autovacuum's defaults wait until a fifth of a table's rows are dead,
-- then throttle themselves; space freed that late is space the next model cannot reuse, and
-- the data directory grew by gigabytes. These tables (and their TOAST, where the bytes are)
-- are vacuumed as soon as about 10 MB is dead, at full speed.
ALTER TABLE thanosql.model_chunks SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50, autovacuum_vacuum_cost_delay = 0,
    toast.autovacuum_vacuum_scale_factor = 0, toast.autovacuum_vacuum_threshold = 5000,
    toast.autovacuum_vacuum_cost_delay = 0);
ALTER TABLE thanosql.job_checkpoints SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50, autovacuum_vacuum_cost_delay = 0,
    toast.autovacuum_vacuum_scale_factor = 0, toast.autovacuum_vacuum_threshold = 5000,
    toast.autovacuum_vacuum_cost_delay = 0);
