-- SimCLR, CONVERT and SEARCH IMAGE through the proxy: each form works once on a
-- tiny model (retrieval quality is tested by tests/test_simclr.py), and bad
-- input gets a clear error with a SQLSTATE.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS thanosql CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- eight handwritten digits (0-7), 8x8 PNG, as bytea
CREATE TABLE pics (id int PRIMARY KEY, img bytea, label int);
INSERT INTO pics VALUES
(1, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000454944415478da05c1411180200000b01de71f1a68036942042319810c26d006d0c023014670436967046dd6592cf62d8f94af20f5a113a48744f065317f58df526f70b48a1fa00f11eb32d4b70e0000000049454e44ae426082', 0),
(2, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e1570000003d4944415478da35ca311180301000b0dc1b4002125a09ef002958ab03248013a88267e0d832048e7323f0f42468e982fdae5ac152d5be43ff81600ec90bef7c0c4fecb9a6850000000049454e44ae426082', 1),
(3, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000444944415478da2dca311180301000b01c066a010748400238400a128a934a4042eb00092fe11960cb1058e3064bc6c3c43eae1994231a94b347819ab97db767b69f2dab17a690146573ece9840000000049454e44ae426082', 2),
(4, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000464944415478da35c6311180200000c03fce1d1a6813686204cf0454b081156c40042a68028ce0e44f8f6df408b5af23c31c7b47f0a4e58e406ceddf59056a2e2599780fd7ee0354090fa459db4d0e0000000049454e44ae426082', 3),
(5, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000434944415478da25c6d11480301400d07b1218c2430861082134831042086108a134840c86f0fae87e5d283716b4f1a7b437028ee93ab165973beacc270b586707222b1f044f105bae3635db0000000049454e44ae426082', 4),
(6, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000404944415478da25c1411180201000c01dc6bf46b009118c42142310056d6003888009ce87bb68d5af477412d3bc5689617b5e904b140b6e7638728b0c6744e503ab361337273928c90000000049454e44ae426082', 5),
(7, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000434944415478da2dc9511140401400c09d2b4003112e0a4d441041050d4410e145a0816bf07c9cbf9d59b8029873eb88ac1d7740616cebf4576455383c6d81617fcfea033022118fe38407080000000049454e44ae426082', 6),
(8, '\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000454944415478da25c6411540300000d0cf739f0644d0800634b10622c820014da6c948c061a7ff2bd676199ebec613affb055b0a1ae3245a0eba33e711f8e6e29e43499ae107863a1009cc9fcb360000000049454e44ae426082', 7);
-- a tiny model (training prints its speed in a NOTICE: not part of the expected output)
SET client_min_messages = warning;
SELECT model, algorithm, rows, epochs
FROM (BUILD MODEL simclr_regress USING SimCLR
      OPTIONS (image_col='img', max_epochs=1, batch_size=4, input_size=16, embedding_dim=16)
      AS SELECT img FROM pics) AS b;
RESET client_min_messages;
-- CONVERT into the query's own table: only the rows the query returns
CONVERT USING simclr_regress OPTIONS (image_col='img') AS SELECT * FROM pics WHERE id <= 6;
SELECT id, vector_dims(convert_result) AS dims, round(vector_norm(convert_result)::numeric, 4) AS norm
FROM pics ORDER BY id;
SELECT indexdef FROM pg_indexes WHERE tablename = 'pics' AND indexdef LIKE '%hnsw%';
-- a second CONVERT (all rows now) updates the vectors in place
CONVERT USING simclr_regress OPTIONS (image_col='img') AS TABLE pics;
SELECT count(convert_result) AS converted FROM pics;
-- into a new table
CONVERT USING simclr_regress OPTIONS (image_col='img', result_col='v', table_name='pics_v')
AS SELECT id, img FROM pics WHERE label % 2 = 0;
SELECT id, vector_dims(v) AS dims FROM pics_v ORDER BY id;
-- rows back (a query on no single table), nested in a SELECT
SELECT id, vector_dims(e) AS dims
FROM (CONVERT USING simclr_regress OPTIONS (image_col='img', result_col='e')
      AS SELECT id, img FROM pics ORDER BY id LIMIT 3) AS c;
-- SEARCH IMAGE: the query image itself comes first, with similarity 1 (psql puts
-- row 3's image, a PNG as a bytea literal '\x...', in place of :'digit3')
\set digit3 '\\x89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e157000000444944415478da2dca311180301000b01c066a010748400238400a128a934a4042eb00092fe11960cb1058e3064bc6c3c43eae1994231a94b347819ab97db767b69f2dab17a690146573ece9840000000049454e44ae426082'
SELECT id, round(search_result::numeric, 3) AS similarity
FROM (SEARCH IMAGE USING simclr_regress
      OPTIONS (search_by='image', search_input=:'digit3', emb_col='convert_result', top_k=1)
      AS SELECT * FROM pics) AS s;
-- search_by text: SimCLR embeds images only, CLIP texts too (42809 names it)
SEARCH IMAGE USING simclr_regress OPTIONS (search_by='text', search_input='a seven', emb_col='convert_result')
AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- emb_col not in the query
SEARCH IMAGE USING simclr_regress OPTIONS (search_input='/tmp/q.png', emb_col='embedding') AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- emb_col not a vector
SEARCH IMAGE USING simclr_regress OPTIONS (search_input='/tmp/q.png', emb_col='label') AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- the query image does not exist
\set VERBOSITY terse
-- (terse: the hint names this checkout's data directory)
SEARCH IMAGE USING simclr_regress OPTIONS (search_input='/nonexistent/q.png', emb_col='convert_result')
AS SELECT * FROM pics;
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
-- vectors of another dimension than the model's
CREATE TABLE pics8 AS SELECT id, img, '[1,2,3,4,5,6,7,8]'::vector(8) AS e FROM pics;
SEARCH IMAGE USING simclr_regress OPTIONS (search_input=:'digit3', emb_col='e') AS SELECT * FROM pics8;
\echo :LAST_ERROR_SQLSTATE
CONVERT USING simclr_regress OPTIONS (image_col='img', result_col='e') AS SELECT * FROM pics8;
\echo :LAST_ERROR_SQLSTATE
-- CONVERT writes into a table, not a view
CREATE VIEW pics_view AS SELECT * FROM pics;
CONVERT USING simclr_regress OPTIONS (image_col='img', result_col='w') AS SELECT * FROM pics_view;
\echo :LAST_ERROR_SQLSTATE
-- unknown model
CONVERT USING no_such_model OPTIONS (image_col='img') AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
SEARCH IMAGE USING no_such_model OPTIONS (search_input='/tmp/q.png', emb_col='convert_result') AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- a classification model does not CONVERT (a catalog row is enough: the family is checked first)
SELECT model_id AS mid FROM thanosql._claim_model('classifier_regress', false, false) \gset
SELECT thanosql._write_model(:mid, 'ConvNeXt_Tiny', 'image_classification', '{}', NULL, NULL, 'none', 'BUILD', 0)
    AS version;
CONVERT USING classifier_regress OPTIONS (image_col='img') AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- only search_input takes a parameter; top_k must be positive
SEARCH IMAGE USING simclr_regress OPTIONS (search_input=$1, emb_col=$2) AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
SEARCH IMAGE USING simclr_regress OPTIONS (search_input='/tmp/q.png', emb_col='convert_result', top_k=0)
AS SELECT * FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- EVALUATE with a label column: retrieval precision@k (each digit here is alone in its
-- class, so none of its nearest images shares it: 0)
-- (the function EVALUATE rewrites to, so that the scores' spread, a similarity that
-- depends on the machine's float kernels, is shown as a range)
SELECT metric, CASE WHEN metric LIKE 'Median%' THEN (score BETWEEN -1 AND 1)::int ELSE score END AS score
  FROM thanosql.evaluate('simclr_regress', '{"image_col": "img", "label_col": "label", "top_k": 3}',
                         'SELECT img, label FROM pics');
-- a report SimCLR models do not make
EVALUATE USING simclr_regress OPTIONS (image_col='img', report='per_class') AS SELECT img, label FROM pics;
\echo :LAST_ERROR_SQLSTATE
-- nothing was left behind by the failed statements
SELECT count(*) AS columns_named_w FROM pg_attribute WHERE attname = 'w' AND attrelid = 'pics'::regclass;
DROP MODEL simclr_regress;
DROP MODEL classifier_regress;
DROP VIEW pics_view;
DROP TABLE pics, pics_v, pics8;
