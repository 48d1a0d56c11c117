-- Plain SQL passes through the proxy untouched, whatever it mentions.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS thanosql CASCADE;
RESET client_min_messages;
CREATE TABLE pt (id int, note text);
-- PREDICT USING m AS SELECT 1;  (a comment, not a statement)
INSERT INTO pt VALUES (1, 'BUILD MODEL x USING ConvNeXt_Tiny AS SELECT 1'), (2, $$PREDICT USING m$$);
/* DELETE MODEL pt; */ SELECT * FROM pt ORDER BY id;
SELECT 'list model' AS "LIST MODEL";
CREATE FUNCTION pt_f() RETURNS text LANGUAGE sql AS $body$ SELECT 'EVALUATE USING m AS SELECT 1' $body$;
SELECT pt_f();
COPY pt FROM STDIN;
3	from copy; DROP MODEL x
\.
SELECT count(*) FROM pt; SELECT max(id) FROM pt;
DELETE FROM pt WHERE id = 3;
-- identifiers that look like keywords
CREATE TABLE model (predict int, evaluate int, build int);
INSERT INTO model VALUES (1, 2, 3);
SELECT predict, evaluate, build FROM model;
DROP TABLE model;
DROP TABLE pt;
DROP FUNCTION pt_f();
