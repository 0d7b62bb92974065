// The action's two steps run ci/job.sh: `start` as its main step, `stop` as its post step.
// A JavaScript action rather than a composite one because only JavaScript (and Docker)
// actions have a post step, which runs after the job's own steps even when one failed; the
// runner brings its own Node, so the job's image needs none (docs/ci.md).
//
// Each input becomes the TRANSCACHE_* variable of the same name (`shared-cache` ->
// TRANSCACHE_SHARED_CACHE), the settings ci/job.sh and GitLab's template share; the state
// lives in $RUNNER_TEMP, which the runner empties after the job.
'use strict';

const { spawnSync } = require('node:child_process');
const path = require('node:path');

const INPUT_PREFIX = 'INPUT_';

function settings(environ) {
  const env = { ...environ, TRANSCACHE_STATE_DIR: path.join(environ.RUNNER_TEMP, 'transcache') };
  for (const [name, value] of Object.entries(environ)) {
    if (name.startsWith(INPUT_PREFIX)) {
      env[`TRANSCACHE_${name.slice(INPUT_PREFIX.length).replaceAll('-', '_')}`] = value;
    }
  }
  return env;
}

function run(command) {
  const script = path.join(__dirname, '..', 'job.sh');
  const result = spawnSync('bash', [script, command], {
    env: settings(process.env),
    stdio: 'inherit',
  });
  if (result.error) {
    console.log(`::error::transcache: cannot run ${script}: ${result.error.message}`);
    process.exitCode = 1;
  } else {
    process.exitCode = result.status ?? 1;
  }
}

module.exports = { run, settings };
