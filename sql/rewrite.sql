-- thanosql.rewrite() and thanosql.execute(): ThanoSQL without the proxy.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS thanosql CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
SELECT thanosql.rewrite('LIST MODEL');
SELECT thanosql.rewrite('DROP MODEL IF EXISTS "My Model"');
SELECT thanosql.rewrite('SELECT 1; -- no ThanoSQL here');
SELECT thanosql.rewrite('BUILD MODEL m USING convnext_tiny OPTIONS (epochs=1, image_col=''p'') AS SELECT * FROM t');
SELECT thanosql.rewrite('BUILD MODEL m USING convnext_tiny OPTIONS (bogus=1) AS SELECT 1');
-- EVALUATE's reports: each has its own function
SELECT thanosql.rewrite('EVALUATE USING m OPTIONS (image_col=''p'', report=''per_class'') AS SELECT * FROM t');
SELECT thanosql.rewrite('EVALUATE USING m OPTIONS (report=''confusion_matrix'') AS SELECT * FROM t');
SELECT thanosql.rewrite('EVALUATE USING m OPTIONS (audio_col=''a'', report=''per_row'') AS SELECT * FROM t');
SELECT thanosql.rewrite('EVALUATE USING m OPTIONS (report=''retrieval'') AS SELECT * FROM t');
SELECT * FROM thanosql.execute('LIST MODEL');
SELECT * FROM thanosql.execute('CREATE TEMP TABLE ex (a int); INSERT INTO ex VALUES (1), (2)');
SELECT * FROM thanosql.execute('SELECT a, a * 2 AS b FROM ex ORDER BY a');
SELECT * FROM thanosql.execute('DROP MODEL IF EXISTS nothing_here');
SELECT * FROM thanosql.execute('DESCRIBE MODEL nothing_here');
