-- The only way into the catalog tables: SECURITY DEFINER functions that check
-- the acting role's privileges themselves (RLS does not apply to them, as
-- they run as the extension's owner). Each takes the caller's role last; see
-- 010-privileges.sql for why and how it is checked.

-- A model for role ``who`` needing ``privilege``. A model that ``who`` may not
-- even USE "does not exist", as it does for LIST MODEL.
CREATE OR REPLACE FUNCTION thanosql._model_for(p_model text, who pg_catalog.regrole, privilege text)
RETURNS thanosql.models LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m thanosql.models;
BEGIN
    PERFORM thanosql._acting_role(who);
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

-- BUILD/FIT: a new model row, or (replace_id) the existing row updated in place
-- with its old weights removed; owner and grants stay. Returns the model id.
CREATE OR REPLACE FUNCTION thanosql._model_write(
    p_name text, p_algorithm text, p_family text, p_options jsonb, p_labels jsonb, p_label_type text,
    p_format text, p_size_bytes bigint, replace_id bigint, keep_history boolean, caller pg_catalog.regrole)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    m thanosql.models;
    new_id bigint;
BEGIN
    IF replace_id IS NULL THEN
        BEGIN
            INSERT INTO thanosql.models (name, algorithm, family, owner, options, labels, label_type, format, size_bytes)
            VALUES (p_name, p_algorithm, p_family, who, p_options, p_labels, p_label_type, p_format, p_size_bytes)
            RETURNING id INTO new_id;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'model "%" already exists', p_name USING ERRCODE = 'duplicate_object',
                HINT = 'Another statement created it meanwhile. Add overwrite=True to OPTIONS to replace it, or choose another name.';
        END;
        RETURN new_id;
    END IF;
    SELECT * INTO m FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) replace_id FOR UPDATE;
    IF NOT FOUND OR m.name OPERATOR(pg_catalog.<>) p_name THEN
        RAISE EXCEPTION 'model "%" was deleted while this statement ran', p_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run the statement again (without overwrite=True if the model is gone).';
    END IF;
    IF NOT thanosql._has_model_privilege(m.id, m.owner, 'MODIFY', who) THEN
        RAISE EXCEPTION 'permission denied to modify model "%"', p_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM thanosql.model_chunks WHERE model_id OPERATOR(pg_catalog.=) m.id;
    IF NOT keep_history THEN
        DELETE FROM thanosql.model_metrics WHERE model_id OPERATOR(pg_catalog.=) m.id;
    END IF;
    UPDATE thanosql.models
       SET algorithm = p_algorithm, family = p_family, options = p_options, labels = p_labels,
           label_type = p_label_type, format = p_format, size_bytes = p_size_bytes,
           version = version OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now(),
           created_at = CASE WHEN keep_history THEN created_at ELSE pg_catalog.now() END
     WHERE id OPERATOR(pg_catalog.=) m.id;
    RETURN m.id;
END $$;

-- One chunk of a model's weights (thanosql_pg writes them right after _model_write).
CREATE OR REPLACE FUNCTION thanosql._model_put_chunk(p_model_id bigint, p_seq integer, p_data bytea,
                                                     caller pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    m thanosql.models;
BEGIN
    SELECT * INTO m FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) p_model_id;
    IF NOT FOUND OR NOT thanosql._has_model_privilege(m.id, m.owner, 'MODIFY', who) THEN
        RAISE EXCEPTION 'permission denied to write the weights of model %', p_model_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO thanosql.model_chunks (model_id, seq, data) VALUES (p_model_id, p_seq, p_data);
END $$;

-- BUILD/FIT/EVALUATE results into the metrics history (USE suffices: a role
-- allowed to EVALUATE a model records its results).
CREATE OR REPLACE FUNCTION thanosql._record_metrics(p_model_id bigint, p_statement text, p_rows bigint,
                                                    p_metrics jsonb, caller pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    m thanosql.models;
BEGIN
    SELECT * INTO m FROM thanosql.models WHERE id OPERATOR(pg_catalog.=) p_model_id;
    IF NOT FOUND OR NOT thanosql._has_model_privilege(m.id, m.owner, 'USE', who) THEN
        RAISE EXCEPTION 'model % does not exist', p_model_id USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO thanosql.model_metrics (model_id, statement, rows, metrics, by_role)
    VALUES (p_model_id, p_statement, p_rows, p_metrics, pg_catalog.pg_get_userbyid(who));
END $$;

CREATE OR REPLACE FUNCTION thanosql._delete_model(p_model text, if_exists boolean, caller pg_catalog.regrole)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    m thanosql.models;
BEGIN
    SELECT * INTO m FROM thanosql.models WHERE name OPERATOR(pg_catalog.=) p_model FOR UPDATE;
    IF NOT FOUND OR NOT thanosql._has_model_privilege(m.id, m.owner, 'USE', who) THEN
        IF if_exists THEN
            RAISE NOTICE 'model "%" does not exist, skipping', p_model;
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'model "%" does not exist', p_model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use; DROP MODEL IF EXISTS skips missing ones.';
    END IF;
    PERFORM thanosql._model_for(p_model, who, 'MODIFY');  -- raises permission denied, with a hint
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

CREATE OR REPLACE FUNCTION thanosql._grant_model(p_model text, p_grantee text, p_privilege text,
                                                 caller pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    priv text := thanosql._model_privilege_name(p_privilege);
    m thanosql.models := thanosql._owned_model(p_model, who, 'grant privileges on it');
BEGIN
    INSERT INTO thanosql.model_grants (model_id, grantee, privilege)
    VALUES (m.id, thanosql._grantee(p_grantee), priv) ON CONFLICT DO NOTHING;
END $$;

CREATE OR REPLACE FUNCTION thanosql._revoke_model(p_model text, p_grantee text, p_privilege text,
                                                  caller pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    priv text := thanosql._model_privilege_name(p_privilege);
    m thanosql.models := thanosql._owned_model(p_model, who, 'revoke privileges on it');
BEGIN
    DELETE FROM thanosql.model_grants g
    WHERE g.model_id OPERATOR(pg_catalog.=) m.id
      AND g.grantee OPERATOR(pg_catalog.=) thanosql._grantee(p_grantee)
      AND g.privilege OPERATOR(pg_catalog.=) priv;
END $$;

-- Like ALTER TABLE ... OWNER TO: the owner may give a model to a role it is a
-- member of (a superuser, to any role).
CREATE OR REPLACE FUNCTION thanosql._alter_model_owner(p_model text, p_new_owner text, caller pg_catalog.regrole)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who pg_catalog.regrole := thanosql._acting_role(caller);
    m thanosql.models := thanosql._owned_model(p_model, who, 'change its owner');
    new_owner pg_catalog.regrole := thanosql._grantee(p_new_owner);
BEGIN
    IF new_owner OPERATOR(pg_catalog.=) 0 OR NOT pg_catalog.pg_has_role(who, new_owner, 'MEMBER') THEN
        RAISE EXCEPTION 'must be able to SET ROLE "%" to give it model "%"', p_new_owner, p_model
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE thanosql.models SET owner = new_owner, updated_at = pg_catalog.now()
     WHERE id OPERATOR(pg_catalog.=) m.id;
END $$;

-- Whether a model name is taken, including by models RLS hides from the
-- caller: lets BUILD fail fast with a clear message instead of a unique
-- violation after training. Reveals only that the name is taken.
CREATE OR REPLACE FUNCTION thanosql._model_name_taken(model text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM thanosql.models WHERE name OPERATOR(pg_catalog.=) model)
$$;
