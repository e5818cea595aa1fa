# The Node.js reference reader (readers/node/, docs/redis-layout.md): `make test-node`.
# Included from the Makefile (`-include mk/node.mk`). Needs node >= 18.19 and npm
# (Debian: apt-get install nodejs npm) and redis-server for the published-layout vectors.
NODE_READER := readers/node

.PHONY: node-env test-node azurite-env

# npm ci only when node_modules is missing or was installed from another package-lock.json
# (the same stamp tests/integration/test_node_reader.py writes and checks).
node-env:
	@command -v node >/dev/null && command -v npm >/dev/null \
	  || { echo "the Node.js reader needs node (>= 18.19) and npm: apt-get install nodejs npm"; exit 1; }
	@cd $(NODE_READER) && want=$$(sha256sum package-lock.json | cut -d' ' -f1); \
	  if [ "$$(cat node_modules/.batchscore-lock 2>/dev/null)" != "$$want" ] || [ ! -f node_modules/redis/package.json ]; then \
	    npm ci --no-audit --no-fund --loglevel=error && echo "$$want" > node_modules/.batchscore-lock; \
	  fi

# The shared test vectors (tests/vectors/) against the Node reader; starts its own redis-server
# unless BATCHSCORE_TEST_REDIS_URL names one.
test-node: node-env
	cd $(NODE_READER) && node --test test/

# Azurite (the Azure Storage emulator) for the abfss:// tests, pinned in tests/azurite; the tests'
# fixture (tests/azure_fixtures.py) runs the same npm ci when it is missing.
azurite-env:
	@command -v node >/dev/null && command -v npm >/dev/null \
	  || { echo "the abfss:// tests need node (>= 18) and npm for Azurite: apt-get install nodejs npm"; exit 1; }
	@test -x tests/azurite/node_modules/.bin/azurite-blob \
	  || (cd tests/azurite && npm ci --no-audit --no-fund --loglevel=error)
