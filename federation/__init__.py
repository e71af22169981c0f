"""Multi-site pooling without moving patient rows: each hospital's deployment writes a signed package of
aggregates and answers round requests with sums over its own stratum; a coordinator verifies and pools them.

- ``contract``: what sites must agree on to be pooled, and its digest;
- ``signing``: Ed25519 signatures over canonical JSON, keys from the environment;
- ``suppression``: small-cell suppression, with complementary suppression of cells a sum would reveal;
- ``package``: the site's aggregate package (build, sign, verify);
- ``exchange``: where packages travel (a local folder; S3/SFTP through fsspec);
- ``protocol``: the round-based exact pooled Cox model (requests, replies, the site's policy, the coordinator).
"""
