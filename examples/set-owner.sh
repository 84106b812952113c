#!/bin/sh
# Make sure every namespace has an "owner" annotation (oc observe's classic example).
#
#   fastobs namespaces --template '{.metadata.annotations.owner}' -- examples/set-owner.sh
#
# fastobs runs it once per namespace and again on every change, with the namespace name
# and the current owner (the template output, empty when missing) as arguments.
name="$1"
owner="$2"
[ -n "$owner" ] && exit 0
exec kubectl annotate namespace "$name" "owner=${DEFAULT_OWNER:-platform-team}"
