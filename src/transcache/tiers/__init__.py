"""Second-level stores behind the local one: a bucket every proxy of a team or CI fleet reads
after a local miss and writes after a store. Modules: `bucket` (the one small interface an
object store offers), `s3` (S3-compatible storage: botocore's credentials and signing over
the proxy's own trio HTTP client), `breaker` (skip a dead tier for a while, pure), `trust`
(Ed25519-signed metadata), `shared` (what the cache calls: look up, upload). Nothing is
imported here: `_config` reads `bucket` without loading trio."""
