-- EVALUATE with option report=...: each form of the result has its own columns, so
-- each has its own function (thanosql_pg.algorithms.registry.REPORTS names them; the
-- summary, rows (metric, score), is thanosql.evaluate). The preprocessor calls the one
-- the report names; which reports a model makes is its family's (its spec's report
-- option). Like thanosql.evaluate, they run the caller's query with the caller's
-- search_path, and record the summary metrics in the model's history.

-- report='per_class': per class, then 'macro avg' and 'weighted avg'.
CREATE OR REPLACE FUNCTION thanosql.evaluate_per_class(model text, options jsonb, query text,
                                                       caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:report:per_class@)
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].evaluate_report(model, options, query, "per_class", caller_search_path)
$$;

-- report='confusion_matrix': how many rows of each actual class got each predicted
-- class (the pairs that occur; a missing pair is 0).
CREATE OR REPLACE FUNCTION thanosql.evaluate_confusion_matrix(model text, options jsonb, query text,
                                                              caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:report:confusion_matrix@)
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].evaluate_report(model, options, query, "confusion_matrix", caller_search_path)
$$;

-- report='per_row': each row's reference, hypothesis, WER and CER, the worst first;
-- row_number is the row's position in the query's result, input its value when that
-- is a path (NULL for the content itself).
CREATE OR REPLACE FUNCTION thanosql.evaluate_per_row(model text, options jsonb, query text,
                                                     caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:report:per_row@)
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].evaluate_report(model, options, query, "per_row", caller_search_path)
$$;
