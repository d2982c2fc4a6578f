#!/bin/sh
# `make deploy` once the template is packaged: sam_deploy.sh CONFIG TEMPLATE
#
# The first deploy is guided (stack name, region, parameters) and saves its answers in CONFIG;
# later deploys reuse them. SAM CLI refuses a --config-file that does not exist, guided or not,
# so the first deploy starts from an empty one, removed again if the guided run ends without
# saving answers into it (aborted, or no credentials): the next deploy is guided again.
set -u
config="$1"
template="$2"
if [ -s "$config" ]; then
	echo "deploy: sam deploy with the settings saved in samconfig.toml"
	# A tree deployed already is no failure (SAM CLI's default exits 1 on an empty change set):
	# make deploy goes on to make migrate.
	exec sam deploy --template-file "$template" --config-file "$config" --no-fail-on-empty-changeset
fi
echo "deploy: first deploy: sam deploy --guided asks for the stack name, region and parameters, and saves them in samconfig.toml"
: > "$config"
sam deploy --guided --template-file "$template" --config-file "$config" \
	--capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND
status=$?
[ -s "$config" ] || rm -f "$config"
exit $status
