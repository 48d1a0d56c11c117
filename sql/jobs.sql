-- Background jobs: the rewrite of background=True, and what the job functions say
-- about jobs that the caller may not see (they do not exist).
SELECT thanosql.rewrite('BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (image_col=''path'', label_col=''label'', background=True) AS SELECT * FROM t');
SELECT thanosql.rewrite('FIT MODEL m2 USING m OPTIONS (epochs=1, background=True) AS SELECT * FROM t');
SELECT thanosql.rewrite('EVALUATE USING m OPTIONS (image_col=''path'', label_col=''label'', background=True) AS SELECT * FROM t');
-- background is a boolean
SELECT thanosql.rewrite('BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (image_col=''path'', background=''yes'') AS SELECT 1');
SELECT thanosql.cancel_job(987654321);
SELECT thanosql.wait_job(987654321, '1 second');
SELECT column_name FROM information_schema.columns
 WHERE table_schema = 'thanosql' AND table_name = 'jobs' ORDER BY ordinal_position;
