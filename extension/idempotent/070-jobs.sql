-- Background jobs: OPTIONS (background=True) on BUILD, FIT, PREDICT into a
-- table, CONVERT into a table and EVALUATE. The submitting session checks
-- everything it can and fixes the rows (thanosql.submit_job); the launcher
-- (src/jobs.c) runs each job in a background worker connected as its owner,
-- which calls thanosql._run_job. Who acts is derived (the C gates of src/act.c
-- for what a role calls, the worker's own job id, thanosql._worker_job(), for
-- what only a job's worker may do), never taken from an argument.

-- A job's folder of checkpoint files on their way into the catalog (thanosql_jobs/<id> in
-- the data directory: src/jobs.c's checkpoint helper), removed.
CREATE OR REPLACE FUNCTION thanosql._remove_job_files(p_job_id bigint) RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_job_remove_files' LANGUAGE C STRICT VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- Removes what a job kept while it ran: its rows and its checkpoint.
CREATE OR REPLACE FUNCTION thanosql._job_cleanup(p_job_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM thanosql._remove_job_files(p_job_id);
    DELETE FROM thanosql.job_checkpoints WHERE job_id OPERATOR(pg_catalog.=) p_job_id;
    -- CASCADE: the worker's temporary view of the rows goes with them
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS thanosql_jobs.%I CASCADE', 'rows_' OPERATOR(pg_catalog.||) p_job_id);
END $$;

-- The launcher's tick (as the bootstrap superuser): jobs whose process is gone go back
-- to the queue (or fail after max_attempts attempts); then queued jobs start, oldest
-- first, while fewer than max_jobs run. ``alive``: the jobs of the workers the launcher
-- started that still run (before they show in pg_stat_activity).
-- ``one_training``: BUILD/FIT jobs run one at a time, whatever max_jobs says (thanosql.device is
-- not 'cpu': trainings would share a GPU); a later PREDICT, EVALUATE or CONVERT may start meanwhile.
CREATE OR REPLACE FUNCTION thanosql._jobs_tick(max_jobs integer, max_attempts integer, alive bigint[],
                                               one_training boolean)
RETURNS TABLE (job_id bigint, owner oid) LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records;
    free integer;
    login boolean;
    training boolean;
BEGIN
    FOR j IN SELECT * FROM thanosql.job_records r
              WHERE r.status OPERATOR(pg_catalog.=) 'running'
                AND r.job_id OPERATOR(pg_catalog.<>) ALL (alive)
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                 WHERE a.pid OPERATOR(pg_catalog.=) r.pid
                                   AND a.backend_type OPERATOR(pg_catalog.=) 'thanosql job')
              ORDER BY r.job_id FOR UPDATE LOOP
        IF j.attempts OPERATOR(pg_catalog.>=) max_attempts THEN
            UPDATE thanosql.job_records r SET status = 'failed', pid = NULL, finished_at = pg_catalog.now(),
                   sqlstate = '57P01',
                   message = pg_catalog.format('interrupted %s times (a server stop or crash, or its process'
                                               ' killed); thanosql.job_max_attempts is %s', j.attempts, max_attempts)
             WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id;
            PERFORM thanosql._job_cleanup(j.job_id);
        ELSE
            UPDATE thanosql.job_records r SET status = 'queued', pid = NULL,
                   message = 'interrupted: resumes from its newest checkpoint'
             WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id;
        END IF;
    END LOOP;
    SELECT max_jobs OPERATOR(pg_catalog.-) pg_catalog.count(*)::integer INTO free
      FROM thanosql.job_records r WHERE r.status OPERATOR(pg_catalog.=) 'running';
    SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 INTO training FROM thanosql.job_records r
     WHERE r.status OPERATOR(pg_catalog.=) 'running' AND r.kind OPERATOR(pg_catalog.=) ANY (ARRAY['build', 'fit']);
    FOR j IN SELECT * FROM thanosql.job_records r WHERE r.status OPERATOR(pg_catalog.=) 'queued'
              ORDER BY r.job_id FOR UPDATE LOOP
        EXIT WHEN free OPERATOR(pg_catalog.<=) 0;
        CONTINUE WHEN one_training AND training AND j.kind OPERATOR(pg_catalog.=) ANY (ARRAY['build', 'fit']);
        SELECT a.rolcanlogin INTO login FROM pg_catalog.pg_authid a WHERE a.oid OPERATOR(pg_catalog.=) j.owner;
        IF NOT FOUND OR NOT login THEN
            UPDATE thanosql.job_records r SET status = 'failed', finished_at = pg_catalog.now(), sqlstate = '28000',
                   message = CASE WHEN login IS NULL
                                  THEN pg_catalog.format('the role that submitted the job (oid %s) was dropped', j.owner::oid)
                                  ELSE pg_catalog.format('role %s may no longer log in', j.owner) END
             WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id;
            PERFORM thanosql._job_cleanup(j.job_id);
            CONTINUE;
        END IF;
        UPDATE thanosql.job_records r SET status = 'running', attempts = r.attempts OPERATOR(pg_catalog.+) 1,
               started_at = pg_catalog.now(), pid = NULL
         WHERE r.job_id OPERATOR(pg_catalog.=) j.job_id;
        free := free OPERATOR(pg_catalog.-) 1;
        training := training OR j.kind OPERATOR(pg_catalog.=) ANY (ARRAY['build', 'fit']);
        job_id := j.job_id;
        owner := j.owner::oid;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION thanosql._job_started(p_job_id bigint, p_pid integer) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE thanosql.job_records SET pid = p_pid
     WHERE job_id OPERATOR(pg_catalog.=) p_job_id AND status OPERATOR(pg_catalog.=) 'running';
$$;

-- No worker slot was free (max_worker_processes): the job waits again, as if never started.
CREATE OR REPLACE FUNCTION thanosql._job_unstart(p_job_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE thanosql.job_records SET status = 'queued', pid = NULL, attempts = attempts OPERATOR(pg_catalog.-) 1
     WHERE job_id OPERATOR(pg_catalog.=) p_job_id AND status OPERATOR(pg_catalog.=) 'running';
$$;

-- The worker's end of a job (as the bootstrap superuser, src/jobs.c): sqlstate 00000 when
-- the statement returned, else its error; a cancel asked for makes it 'cancelled'. A no-op
-- once the job recorded its own end (thanosql._job_done, in its last transaction).
CREATE OR REPLACE FUNCTION thanosql._job_end(p_job_id bigint, p_sqlstate text, p_message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records;
BEGIN
    SELECT * INTO j FROM thanosql.job_records r
     WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id AND r.status OPERATOR(pg_catalog.=) 'running'
       AND (r.pid IS NULL OR r.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()) FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE thanosql.job_records r
       SET status = CASE WHEN p_sqlstate OPERATOR(pg_catalog.=) '00000' THEN 'succeeded'
                         WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END,
           sqlstate = NULLIF(p_sqlstate, '00000'),
           -- PL/Python's prefixes (plpy.Error: , spiexceptions.QueryCanceled: ) say nothing to the user
           message = NULLIF(pg_catalog.left(pg_catalog.regexp_replace(p_message, '^((plpy|spiexceptions)\.[A-Za-z]+: )+', ''),
                                             8192), ''),
           finished_at = pg_catalog.now()
     WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id;
    PERFORM thanosql._job_cleanup(p_job_id);
END $$;

-- A job of role ``who`` that this backend is the worker of, else 42501: what only the
-- job's own worker may do (read its payload and checkpoint, write its checkpoint and end).
CREATE OR REPLACE FUNCTION thanosql._worker_job_row(p_job_id bigint, who pg_catalog.regrole)
RETURNS thanosql.job_records LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records;
BEGIN
    SELECT * INTO j FROM thanosql.job_records r WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id;
    IF NOT FOUND OR thanosql._worker_job() OPERATOR(pg_catalog.<>) p_job_id OR j.owner OPERATOR(pg_catalog.<>) who
       OR j.status OPERATOR(pg_catalog.<>) 'running' THEN
        RAISE EXCEPTION 'only the background worker of job % may do this', p_job_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN j;
END $$;

-- Submission: a job of role ``who``, reading the rows of ``source``, a temporary table of
-- this session (thanosql_pg made it from the caller's query, as the caller). They are
-- copied to thanosql_jobs.rows_<id>, which only ``who`` may read.
CREATE OR REPLACE FUNCTION thanosql._job_create(p_kind text, p_model text, p_payload jsonb, p_search_path text,
                                                p_epochs integer, p_source pg_catalog.regclass,
                                                who pg_catalog.regrole)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    id bigint;
    rows_table text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                    WHERE c.oid OPERATOR(pg_catalog.=) p_source AND c.relkind OPERATOR(pg_catalog.=) 'r'
                      AND c.relpersistence OPERATOR(pg_catalog.=) 't'
                      AND c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
                      AND c.relowner OPERATOR(pg_catalog.=) who) THEN
        RAISE EXCEPTION 'a job reads a temporary table of its own session and role' USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM thanosql._bounded_json(p_payload, 'payload', 1048576);
    IF pg_catalog.octet_length(p_model) OPERATOR(pg_catalog.>) 1024
       OR pg_catalog.octet_length(p_search_path) OPERATOR(pg_catalog.>) 65536 THEN
        RAISE EXCEPTION 'a job names its model in at most 1024 bytes and its search_path in at most 65536'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    INSERT INTO thanosql.job_records (owner, kind, model, payload, search_path, epochs)
    VALUES (who, p_kind, p_model, p_payload, p_search_path, p_epochs) RETURNING job_id INTO id;
    rows_table := 'rows_' OPERATOR(pg_catalog.||) id;
    EXECUTE pg_catalog.format('CREATE TABLE thanosql_jobs.%I AS SELECT * FROM %s', rows_table, p_source);
    EXECUTE pg_catalog.format('GRANT SELECT ON thanosql_jobs.%I TO %I', rows_table, pg_catalog.pg_get_userbyid(who));
    RETURN id;
END $$;

-- The worker's first step: its job (payload, search_path), with its pid recorded.
CREATE OR REPLACE FUNCTION thanosql._job_begin_for(p_job_id bigint, who pg_catalog.regrole)
RETURNS thanosql.job_records LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records := thanosql._worker_job_row(p_job_id, who);
BEGIN
    UPDATE thanosql.job_records r SET pid = pg_catalog.pg_backend_pid()
     WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id RETURNING * INTO j;
    RETURN j;
END $$;

-- A training job's checkpoint: its chunks for ``p_epoch``, then keep (which drops the
-- older epochs'), all in the transaction that the job then commits.
CREATE OR REPLACE FUNCTION thanosql._job_checkpoint_put(p_job_id bigint, p_epoch integer, p_seq integer, p_data bytea,
                                                        who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records := thanosql._worker_job_row(p_job_id, who);
BEGIN
    INSERT INTO thanosql.job_checkpoints (job_id, epoch, seq, data) VALUES (p_job_id, p_epoch, p_seq, p_data)
    ON CONFLICT (job_id, epoch, seq) DO UPDATE SET data = EXCLUDED.data;
END $$;

CREATE OR REPLACE FUNCTION thanosql._job_checkpoint_keep(p_job_id bigint, p_epoch integer, who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records := thanosql._worker_job_row(p_job_id, who);
BEGIN
    -- the job's end (which removes its checkpoint) waits for this transaction, or this one
    -- for it, and then finds the job ended
    PERFORM 1 FROM thanosql.job_records r
     WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id AND r.status OPERATOR(pg_catalog.=) 'running' FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % has ended: its checkpoint is not kept', p_job_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    DELETE FROM thanosql.job_checkpoints c
     WHERE c.job_id OPERATOR(pg_catalog.=) p_job_id AND c.epoch OPERATOR(pg_catalog.<>) p_epoch;
END $$;

-- Chunk ``p_seq`` of the newest checkpoint (NULL past its last chunk, or before the
-- first epoch ends).
CREATE OR REPLACE FUNCTION thanosql._job_checkpoint_read(p_job_id bigint, p_seq integer, who pg_catalog.regrole)
RETURNS bytea LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records := thanosql._worker_job_row(p_job_id, who);
    chunk bytea;
BEGIN
    SELECT c.data INTO chunk FROM thanosql.job_checkpoints c
     WHERE c.job_id OPERATOR(pg_catalog.=) p_job_id AND c.seq OPERATOR(pg_catalog.=) p_seq
       AND c.epoch OPERATOR(pg_catalog.=) (SELECT pg_catalog.max(c2.epoch) FROM thanosql.job_checkpoints c2
                                           WHERE c2.job_id OPERATOR(pg_catalog.=) p_job_id);
    RETURN chunk;
END $$;

-- The job's own end, in the transaction that commits its work: nothing can then run it twice.
CREATE OR REPLACE FUNCTION thanosql._job_done(p_job_id bigint, p_result jsonb, who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records := thanosql._worker_job_row(p_job_id, who);
BEGIN
    PERFORM thanosql._bounded_json(p_result, 'result', 16777216);
    UPDATE thanosql.job_records r SET status = 'succeeded', finished_at = pg_catalog.now(), result = p_result,
           sqlstate = NULL, message = NULL
     WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id;
    PERFORM thanosql._job_cleanup(p_job_id);
END $$;

-- cancel_job: a queued job never starts; a running one stops at its next batch (its worker
-- gets a query cancel) and leaves nothing half-written. Its owner's members and superusers
-- may cancel it; to anyone else it does not exist. False when the job had already ended.
CREATE OR REPLACE FUNCTION thanosql._job_cancel(p_job_id bigint, who pg_catalog.regrole)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j thanosql.job_records;
BEGIN
    SELECT * INTO j FROM thanosql.job_records r WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id FOR UPDATE;
    IF NOT FOUND OR NOT pg_catalog.pg_has_role(who, j.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'job % does not exist', p_job_id USING ERRCODE = 'undefined_object',
            HINT = 'SELECT * FROM thanosql.jobs lists the jobs you may see.';
    END IF;
    IF j.status OPERATOR(pg_catalog.=) 'queued' THEN
        UPDATE thanosql.job_records r SET status = 'cancelled', finished_at = pg_catalog.now(), sqlstate = '57014',
               message = 'cancelled before it started', cancel_requested = true
         WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id;
        PERFORM thanosql._job_cleanup(p_job_id);
        RETURN true;
    END IF;
    IF j.status OPERATOR(pg_catalog.<>) 'running' THEN
        RETURN false;
    END IF;
    UPDATE thanosql.job_records r SET cancel_requested = true WHERE r.job_id OPERATOR(pg_catalog.=) p_job_id;
    IF j.pid IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                      WHERE a.pid OPERATOR(pg_catalog.=) j.pid
                                        AND a.backend_type OPERATOR(pg_catalog.=) 'thanosql job') THEN
        PERFORM pg_catalog.pg_cancel_backend(j.pid);
    END IF;
    RETURN true;
END $$;

-- The gates (src/act.c): the acting role is the server's, passed last as ``who``.
CREATE OR REPLACE FUNCTION thanosql.cancel_job(job_id bigint)
RETURNS boolean AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._create_job(p_kind text, p_model text, p_payload jsonb, p_search_path text,
                                                p_epochs integer, p_source pg_catalog.regclass)
RETURNS bigint AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._job_begin(p_job_id bigint)
RETURNS thanosql.job_records AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._put_job_checkpoint(p_job_id bigint, p_epoch integer, p_seq integer, p_data bytea)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._keep_job_checkpoint(p_job_id bigint, p_epoch integer)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._read_job_checkpoint(p_job_id bigint, p_seq integer)
RETURNS bytea AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._finish_job(p_job_id bigint, p_result jsonb)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

-- thanosql.jobs: a role sees the jobs of the roles it is a member of; superusers and members
-- of pg_read_all_stats see all. epoch: the running job's, from thanosql.progress.
CREATE OR REPLACE VIEW thanosql.jobs WITH (security_barrier) AS
    SELECT j.job_id, j.owner::pg_catalog.text AS owner, j.kind, j.model, j.status, j.attempts,
           (SELECT s.epoch FROM thanosql._progress_slots() s
             WHERE j.status OPERATOR(pg_catalog.=) 'running' AND s.pid OPERATOR(pg_catalog.=) j.pid LIMIT 1) AS epoch,
           j.epochs, j.pid, j.submitted_at, j.started_at, j.finished_at, j.sqlstate, j.message, j.result
    FROM thanosql.job_records j
    WHERE thanosql._job_visible(j.owner);
COMMENT ON VIEW thanosql.jobs IS 'Background jobs (OPTIONS (background=True)) that the current role may see';

-- The final status of a job, or its status when ``timeout`` passes first. Cancellable.
CREATE OR REPLACE FUNCTION thanosql.wait_job(job_id bigint, timeout interval DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) timeout;
    s text;
BEGIN
    LOOP
        SELECT j.status INTO s FROM thanosql.jobs j WHERE j.job_id OPERATOR(pg_catalog.=) wait_job.job_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % does not exist', wait_job.job_id USING ERRCODE = 'undefined_object',
                HINT = 'SELECT * FROM thanosql.jobs lists the jobs you may see.';
        END IF;
        IF s OPERATOR(pg_catalog.=) ANY (ARRAY['succeeded', 'failed', 'cancelled'])
           OR pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) deadline THEN
            RETURN s;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
END $$;

-- Submission (the preprocessor's rewrite of a statement with background=True): kind,
-- the model it writes or uses, its source (BUILD: the algorithm; FIT: the base model),
-- its options, the query after AS, and (PREDICT, EVALUATE, CONVERT) the statement's
-- plain SQL reading pg_temp.__thanosql_job_rows. Returns the queued job.
CREATE OR REPLACE FUNCTION thanosql.submit_job(kind text, model text, source text, options jsonb, query text,
                                               statement text,
                                               caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:submitted@)
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].submit_job(kind, model, source, options, query, statement, caller_search_path)
$$;

-- A job worker's checkpoint helper (src/jobs.c): starting one for the checkpoint file of
-- an epoch, and waiting for it; only in a job's worker.
CREATE OR REPLACE FUNCTION thanosql._store_job_checkpoint_async(p_epoch integer) RETURNS boolean
    AS 'MODULE_PATHNAME', 'thanosql_job_checkpoint_async' LANGUAGE C STRICT VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._wait_job_checkpoint() RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_job_checkpoint_wait' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- What the helper runs, as the job's owner: the file into the catalog, committed.
CREATE OR REPLACE PROCEDURE thanosql._store_job_checkpoint(job_id bigint, epoch integer) LANGUAGE plpython3u AS $$
plpy.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
GD["thanosql"].store_job_checkpoint(job_id, epoch)
$$;

-- What a job's worker runs (src/jobs.c), as the job's owner. A procedure, called at top
-- level, so that training commits a checkpoint after every epoch; PostgreSQL forbids a
-- SET clause on a procedure that commits, so it pins search_path itself, first (the
-- worker's session is the job's alone). Only the job's own worker gets past _job_begin.
CREATE OR REPLACE PROCEDURE thanosql._run_job(job_id bigint) LANGUAGE plpython3u AS $$
plpy.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
GD["thanosql"].run_job(job_id)
$$;
