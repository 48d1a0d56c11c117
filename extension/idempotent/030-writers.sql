-- The only way into the catalog tables: SECURITY DEFINER functions that check
-- the acting role's privileges themselves (RLS does not apply to them, as
-- they run as the extension's owner). PUBLIC cannot execute them: each is the
-- implementation behind a C gate (src/act.c) that PUBLIC calls, which reads
-- the acting role from the server (GetUserId()) and passes it last, as
-- ``who``. No caller can name the role it acts as.

-- Models are changed on the primary only: on a hot standby every writer says so
-- (PostgreSQL's own read-only error, 25006, with a hint) before doing anything.
CREATE OR REPLACE FUNCTION thanosql._writable() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'cannot change models on a read-only standby' USING ERRCODE = 'read_only_sql_transaction',
            HINT = 'Run BUILD, FIT, DELETE, grants and rollbacks on the primary server: models reach the standbys '
                   'by replication. PREDICT, SEARCH IMAGE, EVALUATE and CONVERT''s inline form run here.';
    END IF;
    RETURN true;
END $$;

-- A model for role ``who`` needing ``privilege``. A model that ``who`` may not
-- even USE "does not exist", as it does for LIST MODEL.
CREATE OR REPLACE FUNCTION thanosql._model_for(p_model text, who pg_catalog.regrole, privilege text)
RETURNS thanosql.models LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m thanosql.models;
BEGIN
    SELECT * INTO m FROM thanosql.models WHERE name OPERATOR(pg_catalog.=) p_model;
    IF NOT FOUND OR NOT thanosql._has_model_privilege(m.id, m.owner, 'USE', who) THEN
        RAISE EXCEPTION 'model "%" does not exist', p_model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use.';
    END IF;
    IF privilege OPERATOR(pg_catalog.=) 'MODIFY' AND NOT thanosql._has_model_privilege(m.id, m.owner, 'MODIFY', who) THEN
        RAISE EXCEPTION 'permission denied to modify model "%"', p_model
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('Model "%s" belongs to role %s; ask its owner to run SELECT thanosql.grant_model(%L, %L, ''MODIFY'').',
                                           p_model, m.owner, p_model, pg_catalog.pg_get_userbyid(who));
    END IF;
    RETURN m;
END $$;

-- A model by id for role ``who`` needing ``privilege``, else 42501 naming ``what``
-- the caller wanted to do (the id comes from thanosql_pg, never from a name).
CREATE OR REPLACE FUNCTION thanosql._model_by_id(p_model_id bigint, who pg_catalog.regrole, privilege text,
                                                 what text)
RETURNS thanosql.models LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m thanosql.models;
BEGIN
    SELECT * INTO m FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) p_model_id;
    IF NOT FOUND OR NOT thanosql._has_model_privilege(m.id, m.owner, privilege, who) THEN
        RAISE EXCEPTION 'permission denied to % of model %', what, p_model_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN m;
END $$;

-- Locks a model's row for a change: at once or a 55P03 error naming the session
-- that holds it (a BUILD or FIT in progress), or, with ``wait``, after it.
CREATE OR REPLACE FUNCTION thanosql._lock_model(p_model_id bigint, p_name text, wait boolean,
                                                who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF wait THEN
        PERFORM 1 FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) p_model_id FOR UPDATE;
    ELSE
        PERFORM 1 FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) p_model_id FOR UPDATE NOWAIT;
    END IF;
EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION 'model "%" is being changed by another session%', p_name, thanosql._holder(p_name, who)
        USING ERRCODE = 'lock_not_available',
              HINT = 'Try again when that statement has finished, or add wait=True to OPTIONS to wait for it.';
END $$;

-- Who holds a model name right now, for "being built by another session"
-- errors: the session's pid and role from thanosql.progress, when the server
-- has it (shared_preload_libraries), else nothing. Only a session that ``who``
-- could see in thanosql.progress is named (its own role's, or any for
-- superusers and members of pg_read_all_stats), never another role's.
CREATE OR REPLACE FUNCTION thanosql._holder(p_name text, who pg_catalog.regrole) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder text;
BEGIN
    IF NOT thanosql._progress_available() THEN
        RETURN '';
    END IF;
    SELECT pg_catalog.format(' (session %s, role %s, running %s)', s.pid, pg_catalog.pg_get_userbyid(s.role),
                             s.statement)
      INTO holder
      FROM thanosql._progress_slots() s
     WHERE s.model OPERATOR(pg_catalog.=) p_name AND s.database OPERATOR(pg_catalog.=) (
               SELECT d.oid FROM pg_catalog.pg_database d
                WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
       AND s.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
       AND (pg_catalog.pg_has_role(who, s.role, 'USAGE')
            OR pg_catalog.pg_has_role(who, 'pg_read_all_stats', 'USAGE'))
     LIMIT 1;
    RETURN COALESCE(holder, '');
END $$;

-- BUILD/FIT claim their model's name before training: a new name gets its row
-- now (invisible to others until the statement commits, but a second claim of
-- the name conflicts with it), an existing model is locked. A second BUILD or
-- FIT of the same name then fails at once (55P03), or waits when asked to,
-- instead of training to the end and losing. Returns the model's id and
-- whether it existed.
CREATE OR REPLACE FUNCTION thanosql._model_claim(p_name text, overwrite boolean, wait boolean,
                                                 who pg_catalog.regrole,
                                                 OUT model_id bigint, OUT existed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models;
    saved_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    -- a queued or running background BUILD/FIT of the name has it (its own worker excepted)
    IF EXISTS (SELECT 1 FROM thanosql.job_records j
                WHERE j.model OPERATOR(pg_catalog.=) p_name AND j.kind OPERATOR(pg_catalog.=) ANY (ARRAY['build', 'fit'])
                  AND j.status OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running'])
                  AND j.job_id OPERATOR(pg_catalog.<>) thanosql._worker_job()) THEN
        RAISE EXCEPTION 'model "%" is being built by a background job', p_name USING ERRCODE = 'lock_not_available',
            HINT = 'Wait for it to end (thanosql.jobs lists your jobs; thanosql.wait_job waits for one), or choose another name.';
    END IF;
    FOR attempt IN 1..2 LOOP
        SELECT * INTO m FROM thanosql.models WHERE name OPERATOR(pg_catalog.=) p_name;
        IF FOUND THEN
            IF NOT thanosql._has_model_privilege(m.id, m.owner, 'USE', who) THEN
                RAISE EXCEPTION 'model "%" already exists and belongs to another role', p_name
                    USING ERRCODE = 'duplicate_object', HINT = 'Choose another name.';
            END IF;
            IF NOT overwrite THEN
                RAISE EXCEPTION 'model "%" already exists', p_name USING ERRCODE = 'duplicate_object',
                    HINT = 'Add overwrite=True to OPTIONS to replace it (the current version is kept), or choose another name.';
            END IF;
            PERFORM thanosql._model_for(p_name, who, 'MODIFY');
            PERFORM thanosql._lock_model(m.id, p_name, wait, who);
            model_id := m.id;
            existed := true;
            RETURN;
        END IF;
        BEGIN
            -- A concurrent, uncommitted claim of the name makes this INSERT wait for
            -- that statement: at once a lock error, unless asked to wait.
            IF NOT wait THEN
                PERFORM pg_catalog.set_config('lock_timeout', '10ms', true);
            END IF;
            INSERT INTO thanosql.models (name, algorithm, family, owner, format, size_bytes, version)
            VALUES (p_name, '', '', who, 'pending', 0, 0)
            RETURNING id INTO model_id;
            PERFORM pg_catalog.set_config('lock_timeout', saved_timeout, true);
            existed := false;
            RETURN;
        EXCEPTION
            WHEN lock_not_available THEN
                PERFORM pg_catalog.set_config('lock_timeout', saved_timeout, true);
                RAISE EXCEPTION 'model "%" is being built by another session%', p_name, thanosql._holder(p_name, who)
                    USING ERRCODE = 'lock_not_available',
                          HINT = 'Wait for it to finish, or add wait=True to OPTIONS to wait for it.';
            WHEN unique_violation THEN
                -- the other statement committed meanwhile: decide again, as for an existing model
                PERFORM pg_catalog.set_config('lock_timeout', saved_timeout, true);
        END;
    END LOOP;
    RAISE EXCEPTION 'model "%" already exists', p_name USING ERRCODE = 'duplicate_object';
END $$;

-- BUILD/FIT done: a new version of a claimed model. Its weights follow through
-- _model_put_chunk, then _model_seal computes their size and hash from the
-- stored bytes. Keeps thanosql.keep_versions earlier versions and drops older
-- ones with their weights. Returns the new version number.
CREATE OR REPLACE FUNCTION thanosql._model_write(
    p_model_id bigint, p_algorithm text, p_family text, p_options jsonb, p_labels jsonb, p_label_type text,
    p_format text, p_statement text, p_rows bigint, who pg_catalog.regrole)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models;
    v integer;
    keep integer := COALESCE(pg_catalog.current_setting('thanosql.keep_versions', true), '3')::integer;
BEGIN
    IF p_statement IS NULL OR p_statement OPERATOR(pg_catalog.<>) ALL (ARRAY['BUILD', 'FIT']) THEN
        RAISE EXCEPTION 'a model version is made by BUILD or FIT, not %', p_statement
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM thanosql._bounded_json(p_options, 'options', 1048576);
    PERFORM thanosql._bounded_json(p_labels, 'labels', 16777216);
    IF GREATEST(pg_catalog.octet_length(p_algorithm), pg_catalog.octet_length(p_family),
                pg_catalog.octet_length(p_format), pg_catalog.octet_length(p_label_type)) OPERATOR(pg_catalog.>) 256
       OR p_rows OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'a model version names its algorithm, family, format and label type in at most 256'
                        ' bytes each, and counts rows from 0' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO m FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) p_model_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % was deleted while this statement ran', p_model_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run the statement again (without overwrite=True if the model is gone).';
    END IF;
    IF NOT thanosql._has_model_privilege(m.id, m.owner, 'MODIFY', who) THEN
        RAISE EXCEPTION 'permission denied to modify model "%"', m.name USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT COALESCE(pg_catalog.max(mv.version), m.version) OPERATOR(pg_catalog.+) 1 INTO v
      FROM thanosql.model_versions mv WHERE mv.model_id OPERATOR(pg_catalog.=) m.id;
    INSERT INTO thanosql.model_versions (model_id, version, algorithm, family, options, labels, label_type, format,
                                         size_bytes, payload_sha256, statement, rows, created_by)
    VALUES (m.id, v, p_algorithm, p_family, p_options, p_labels, p_label_type, p_format, 0,
            NULL, p_statement, p_rows, pg_catalog.pg_get_userbyid(who));
    UPDATE thanosql.models
       SET algorithm = p_algorithm, family = p_family, options = p_options, labels = p_labels,
           label_type = p_label_type, format = p_format, size_bytes = 0, version = v,
           updated_at = pg_catalog.now()
     WHERE id OPERATOR(pg_catalog.=) m.id;
    DELETE FROM thanosql.model_versions mv
     WHERE mv.model_id OPERATOR(pg_catalog.=) m.id
       AND mv.version OPERATOR(pg_catalog.<) v
       AND mv.version OPERATOR(pg_catalog.<>) ALL (
               ARRAY(SELECT k.version FROM thanosql.model_versions k
                      WHERE k.model_id OPERATOR(pg_catalog.=) m.id AND k.version OPERATOR(pg_catalog.<) v
                      ORDER BY k.version DESC LIMIT GREATEST(keep, 0)));
    RETURN v;
END $$;

-- One chunk of the current version's weights (thanosql_pg writes them right after
-- _model_write): CHUNK bytes each (src: thanosql_pg/server/catalog.py), the last
-- one shorter; never into a version that is sealed.
CREATE OR REPLACE FUNCTION thanosql._model_put_chunk(p_model_id bigint, p_seq integer, p_data bytea,
                                                     who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models := thanosql._model_by_id(p_model_id, who, 'MODIFY', 'write the weights');
BEGIN
    IF p_seq IS NULL OR p_seq OPERATOR(pg_catalog.<) 0 OR p_data IS NULL
       OR pg_catalog.length(p_data) OPERATOR(pg_catalog.>) 1048576
       OR pg_catalog.length(p_data) OPERATOR(pg_catalog.=) 0 THEN
        RAISE EXCEPTION 'a weights chunk has a sequence number from 0 and 1 to 1048576 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The version row, share-locked until this transaction ends: a seal (which locks it
    -- for update) waits for this chunk, and counts it, or this insert sees the seal.
    IF EXISTS (SELECT 1 FROM thanosql.model_versions v
                WHERE v.model_id OPERATOR(pg_catalog.=) m.id AND v.version OPERATOR(pg_catalog.=) m.version
                  AND v.payload_sha256 IS NOT NULL FOR SHARE) THEN
        RAISE EXCEPTION 'version % of model "%" is sealed: its weights cannot change', m.version, m.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'BUILD or FIT makes a new version.';
    END IF;
    INSERT INTO thanosql.model_chunks (model_id, version, seq, data) VALUES (p_model_id, m.version, p_seq, p_data);
END $$;

-- The hash that names a version's weights (and their file in the server's
-- weights cache), computed here from the stored chunks, never taken from a
-- caller: SHA-256 over the SHA-256 of each chunk, in order, so that it is
-- computed one chunk at a time. thanosql_pg.server.weights_cache computes the
-- same over a file in 1 MiB pieces.
CREATE OR REPLACE FUNCTION thanosql._weights_digest(p_model_id bigint, p_version integer) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(COALESCE(
               pg_catalog.string_agg(pg_catalog.sha256(c.data), ''::pg_catalog.bytea ORDER BY c.seq), ''::pg_catalog.bytea)), 'hex')
      FROM thanosql.model_chunks c
     WHERE c.model_id OPERATOR(pg_catalog.=) p_model_id AND c.version OPERATOR(pg_catalog.=) p_version
$$;

-- The weights of the current version are complete: checks that the chunks are
-- 0..n-1, all but the last of 1 MiB, then records their size and hash. A sealed
-- version takes no more chunks. Returns the hash.
CREATE OR REPLACE FUNCTION thanosql._model_seal(p_model_id bigint, who pg_catalog.regrole)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models := thanosql._model_by_id(p_model_id, who, 'MODIFY', 'write the weights');
    n bigint;
    top integer;
    short bigint;
    total bigint;
    digest text;
BEGIN
    -- No chunk of an uncommitted transaction escapes the count: a put_chunk holds the
    -- version row share-locked until it commits.
    PERFORM 1 FROM thanosql.model_versions v
      WHERE v.model_id OPERATOR(pg_catalog.=) m.id AND v.version OPERATOR(pg_catalog.=) m.version FOR UPDATE;
    SELECT pg_catalog.count(*), pg_catalog.max(c.seq), COALESCE(pg_catalog.sum(pg_catalog.length(c.data)), 0)
      INTO n, top, total
      FROM thanosql.model_chunks c
     WHERE c.model_id OPERATOR(pg_catalog.=) m.id AND c.version OPERATOR(pg_catalog.=) m.version;
    SELECT pg_catalog.count(*) INTO short
      FROM thanosql.model_chunks c
     WHERE c.model_id OPERATOR(pg_catalog.=) m.id AND c.version OPERATOR(pg_catalog.=) m.version
       AND c.seq OPERATOR(pg_catalog.<>) top AND pg_catalog.length(c.data) OPERATOR(pg_catalog.<>) 1048576;
    IF n OPERATOR(pg_catalog.=) 0 OR top OPERATOR(pg_catalog.<>) (n OPERATOR(pg_catalog.-) 1)
       OR short OPERATOR(pg_catalog.>) 0 THEN
        RAISE EXCEPTION 'the weights of model "%" are incomplete: chunks 0..n-1 of 1 MiB (the last shorter) are expected',
            m.name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    digest := thanosql._weights_digest(m.id, m.version);
    UPDATE thanosql.model_versions v SET payload_sha256 = digest, size_bytes = total
     WHERE v.model_id OPERATOR(pg_catalog.=) m.id AND v.version OPERATOR(pg_catalog.=) m.version
       AND v.payload_sha256 IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'version % of model "%" is sealed already', m.version, m.name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE thanosql.models SET size_bytes = total WHERE id OPERATOR(pg_catalog.=) m.id;
    RETURN digest;
END $$;

-- A jsonb value that a caller hands a writer, bounded before it is stored: the
-- catalog's readers (DESCRIBE MODEL) must never be made to fail by its size.
CREATE OR REPLACE FUNCTION thanosql._bounded_json(value jsonb, what text, max_bytes integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.pg_column_size(value) OPERATOR(pg_catalog.>) max_bytes THEN
        RAISE EXCEPTION 'the model''s % take % bytes, more than the % allowed', what,
            pg_catalog.pg_column_size(value), max_bytes USING ERRCODE = 'program_limit_exceeded';
    END IF;
END $$;

-- The per-epoch history of the BUILD/FIT that made the current version: a
-- jsonb array of objects with model_epochs' column names.
CREATE OR REPLACE FUNCTION thanosql._record_epochs(p_model_id bigint, p_epochs jsonb, who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models := thanosql._model_by_id(p_model_id, who, 'MODIFY', 'write the history');
BEGIN
    PERFORM thanosql._bounded_json(p_epochs, 'epoch history', 4194304);
    IF EXISTS (SELECT 1 FROM thanosql.model_epochs e
                WHERE e.model_id OPERATOR(pg_catalog.=) m.id AND e.version OPERATOR(pg_catalog.=) m.version) THEN
        RAISE EXCEPTION 'version % of model "%" has its history already', m.version, m.name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO thanosql.model_epochs (model_id, version, epoch, metric, train_loss, train_metric, validation_loss,
                                       validation_metric, learning_rate, seconds, samples_per_second)
    SELECT m.id, m.version, e.epoch, e.metric, e.train_loss, e.train_metric, e.validation_loss,
           e.validation_metric, e.learning_rate, e.seconds, e.samples_per_second
      FROM pg_catalog.jsonb_to_recordset(p_epochs) AS e(epoch integer, metric text, train_loss double precision,
           train_metric double precision, validation_loss double precision, validation_metric double precision,
           learning_rate double precision, seconds double precision, samples_per_second double precision);
END $$;

-- Makes a kept version the current one again (PREDICT uses it from now on).
CREATE OR REPLACE FUNCTION thanosql._rollback_model(p_model text, p_version integer, who pg_catalog.regrole)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models := thanosql._model_for(p_model, who, 'MODIFY');
    v thanosql.model_versions;
BEGIN
    PERFORM thanosql._lock_model(m.id, p_model, false, who);
    SELECT * INTO v FROM thanosql.model_versions
     WHERE model_id OPERATOR(pg_catalog.=) m.id AND version OPERATOR(pg_catalog.=) p_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" has no version %', p_model, p_version USING ERRCODE = 'undefined_object',
            HINT = pg_catalog.format('SELECT * FROM thanosql.model_versions(%L) lists the kept versions.', p_model);
    END IF;
    UPDATE thanosql.models
       SET algorithm = v.algorithm, family = v.family, options = v.options, labels = v.labels,
           label_type = v.label_type, format = v.format, size_bytes = v.size_bytes, version = v.version,
           updated_at = pg_catalog.now()
     WHERE id OPERATOR(pg_catalog.=) m.id;
    RETURN v.version;
END $$;

-- BUILD/FIT/EVALUATE results into the metrics history. Only the owner and MODIFY
-- grantees write a model's history: an EVALUATE by a USE grantee returns its
-- results without recording them.
CREATE OR REPLACE FUNCTION thanosql._record_metrics(p_model_id bigint, p_statement text, p_rows bigint,
                                                    p_metrics jsonb, who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models := thanosql._model_by_id(p_model_id, who, 'MODIFY', 'record the metrics');
    kept integer := 1000;  -- rows of history per model: DESCRIBE MODEL must never fail by their number
BEGIN
    IF p_statement IS NULL OR p_statement OPERATOR(pg_catalog.<>) ALL (ARRAY['BUILD', 'FIT', 'EVALUATE']) THEN
        RAISE EXCEPTION 'metrics are recorded for BUILD, FIT or EVALUATE, not %', p_statement
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM thanosql._bounded_json(p_metrics, 'metrics', 65536);
    INSERT INTO thanosql.model_metrics (model_id, statement, rows, metrics, by_role, version)
    VALUES (p_model_id, p_statement, p_rows, p_metrics, pg_catalog.pg_get_userbyid(who), m.version);
    DELETE FROM thanosql.model_metrics h
     WHERE h.model_id OPERATOR(pg_catalog.=) m.id
       AND h.ctid OPERATOR(pg_catalog.<>) ALL (ARRAY(
               SELECT k.ctid FROM thanosql.model_metrics k WHERE k.model_id OPERATOR(pg_catalog.=) m.id
                ORDER BY k.at DESC LIMIT kept));
    IF p_statement OPERATOR(pg_catalog.=) ANY (ARRAY['BUILD', 'FIT']) THEN
        UPDATE thanosql.model_versions SET rows = p_rows, metrics = p_metrics
         WHERE model_id OPERATOR(pg_catalog.=) m.id AND version OPERATOR(pg_catalog.=) m.version;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION thanosql._delete_model(p_model text, if_exists boolean, who pg_catalog.regrole)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models;
BEGIN
    SELECT * INTO m FROM thanosql.models WHERE name OPERATOR(pg_catalog.=) p_model;
    IF NOT FOUND OR NOT thanosql._has_model_privilege(m.id, m.owner, 'USE', who) THEN
        IF if_exists THEN
            RAISE NOTICE 'model "%" does not exist, skipping', p_model;
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'model "%" does not exist', p_model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use; DROP MODEL IF EXISTS skips missing ones.';
    END IF;
    PERFORM thanosql._model_for(p_model, who, 'MODIFY');  -- raises permission denied, with a hint
    PERFORM thanosql._lock_model(m.id, p_model, false, who);
    DELETE FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) m.id;
    RETURN p_model;
END $$;

-- A role named as PostgreSQL names roles in GRANT: unquoted names fold to lower
-- case, "Quoted" ones keep it; PUBLIC is 0. The role must exist.
CREATE OR REPLACE FUNCTION thanosql._grantee(p_grantee text) RETURNS pg_catalog.regrole
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r pg_catalog.regrole;
BEGIN
    IF p_grantee IS NULL THEN
        RAISE EXCEPTION 'the grantee must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.lower(p_grantee) OPERATOR(pg_catalog.=) 'public' THEN
        RETURN 0;
    END IF;
    r := pg_catalog.to_regrole(p_grantee);
    IF r IS NULL THEN
        RAISE EXCEPTION 'role "%" does not exist', p_grantee USING ERRCODE = 'undefined_object',
            HINT = 'Name an existing role; write "MixedCase" names in double quotes, as in GRANT.';
    END IF;
    RETURN r;
END $$;

CREATE OR REPLACE FUNCTION thanosql._model_privilege_name(p_privilege text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_privilege IS NULL OR pg_catalog.upper(p_privilege) OPERATOR(pg_catalog.<>) ALL (ARRAY['USE', 'MODIFY']) THEN
        RAISE EXCEPTION 'unknown model privilege "%"', p_privilege USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use ''USE'' (predict, evaluate, fit from) or ''MODIFY'' (overwrite, fit into, delete).';
    END IF;
    RETURN pg_catalog.upper(p_privilege);
END $$;

-- Only the owner (a member of the owning role) or a superuser grants and revokes.
CREATE OR REPLACE FUNCTION thanosql._owned_model(p_model text, who pg_catalog.regrole, action text)
RETURNS thanosql.models LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m thanosql.models := thanosql._model_for(p_model, who, 'USE');
BEGIN
    IF NOT pg_catalog.pg_has_role(who, m.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of model "%" (%) can %', p_model, m.owner, action
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN m;
END $$;

CREATE OR REPLACE FUNCTION thanosql._grant_model(p_model text, p_grantee name, p_privilege text,
                                                 who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    priv text := thanosql._model_privilege_name(p_privilege);
    m thanosql.models := thanosql._owned_model(p_model, who, 'grant privileges on it');
BEGIN
    INSERT INTO thanosql.model_grants (model_id, grantee, privilege)
    VALUES (m.id, thanosql._grantee(p_grantee::text), priv) ON CONFLICT DO NOTHING;
END $$;

CREATE OR REPLACE FUNCTION thanosql._revoke_model(p_model text, p_grantee name, p_privilege text,
                                                  who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    priv text := thanosql._model_privilege_name(p_privilege);
    m thanosql.models := thanosql._owned_model(p_model, who, 'revoke privileges on it');
BEGIN
    DELETE FROM thanosql.model_grants g
    WHERE g.model_id OPERATOR(pg_catalog.=) m.id
      AND g.grantee OPERATOR(pg_catalog.=) thanosql._grantee(p_grantee::text)
      AND g.privilege OPERATOR(pg_catalog.=) priv;
END $$;

-- Like ALTER TABLE ... OWNER TO: the owner may give a model to a role it is a
-- member of (a superuser, to any role).
CREATE OR REPLACE FUNCTION thanosql._alter_model_owner(p_model text, p_new_owner name, who pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    writable boolean := thanosql._writable();
    m thanosql.models := thanosql._owned_model(p_model, who, 'change its owner');
    new_owner pg_catalog.regrole := thanosql._grantee(p_new_owner::text);
BEGIN
    IF new_owner OPERATOR(pg_catalog.=) 0 OR NOT pg_catalog.pg_has_role(who, new_owner, 'MEMBER') THEN
        RAISE EXCEPTION 'must be able to SET ROLE "%" to give it model "%"', p_new_owner, p_model
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE thanosql.models SET owner = new_owner, updated_at = pg_catalog.now()
     WHERE id OPERATOR(pg_catalog.=) m.id;
END $$;
