{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "fastobs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fastobs.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-wide objects carry the release namespace: two releases of one name must not collide. */}}
{{- define "fastobs.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "fastobs.fullname" .) }}
{{- end }}

{{- define "fastobs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: selector labels never carry the version or chart, which change (selectors are immutable). */}}
{{- define "fastobs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fastobs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fastobs.labels" -}}
helm.sh/chart: {{ include "fastobs.chart" . }}
{{ include "fastobs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "fastobs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fastobs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fastobs.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The watched resource ------------------------------------------------------------------

fastobs.resource: the canonical name (plural, plus .group outside the core group) as a
dict {name, group, plural, clusterScoped}. Built-in names and kubectl's aliases (po, deploy,
deployments) resolve through _resources.tpl, so the Role names the resource exactly as the
API server authorizes it; any other name must be plural.group (a custom resource). */}}
{{- define "fastobs.resource" -}}
{{- $given := required "watch.resource is required: the resource to observe, e.g. --set watch.resource=pods" .Values.watch.resource }}
{{- $table := include "fastobs.builtinResources" . | fromYaml }}
{{- $name := get $table.aliases $given | default $given }}
{{- $parts := splitList "." $name }}
{{- $plural := first $parts }}
{{- $group := rest $parts | join "." }}
{{- if and (gt (len $parts) 1) (regexMatch "^v[0-9]+((alpha|beta)[0-9]+)?$" (index $parts 1)) }}
{{- fail (printf "watch.resource %q: give the group without a version, as kubectl does: %s.%s" $given $plural (rest (rest $parts) | join ".")) }}
{{- end }}
{{- $builtin := hasKey $table.resources $name }}
{{- if and (not $builtin) (eq $group "") }}
{{- fail (printf "watch.resource %q is not a built-in resource: name a custom resource as plural.group, e.g. widgets.example.com" $given) }}
{{- end }}
{{- $clusterScoped := false }}
{{- if $builtin }}
{{- $clusterScoped = get $table.resources $name }}
{{- if and (not (kindIs "invalid" .Values.watch.clusterScoped)) (ne .Values.watch.clusterScoped $clusterScoped) }}
{{- fail (printf "watch.clusterScoped: %s is %s; leave watch.clusterScoped unset for built-in resources" $name (ternary "cluster-scoped" "namespaced" $clusterScoped)) }}
{{- end }}
{{- else }}
{{- $clusterScoped = .Values.watch.clusterScoped | default false }}
{{- end }}
{{- dict "name" $name "group" $group "plural" $plural "clusterScoped" $clusterScoped | toJson }}
{{- end }}

{{/* "true" when the chart needs cluster-wide read access (all namespaces, or a cluster-scoped resource). */}}
{{- define "fastobs.clusterWide" -}}
{{- $r := include "fastobs.resource" . | fromJson }}
{{- if or .Values.watch.allNamespaces $r.clusterScoped }}true{{ end }}
{{- end }}

{{/* The namespace whose objects are watched (and where the Role lives) in namespace scope. */}}
{{- define "fastobs.watchNamespace" -}}
{{- .Values.watch.namespace | default .Release.Namespace }}
{{- end }}

{{/* The rule fastobs itself needs: list and watch the resource, get for single reads. */}}
{{- define "fastobs.watchRule" -}}
{{- $r := include "fastobs.resource" . | fromJson }}
- apiGroups: [{{ $r.group | quote }}]
  resources: [{{ $r.plural | quote }}]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Arguments ------------------------------------------------------------------------------
fastobs's command line: RESOURCE, flags, then "--" and the command. Values left empty or null
pass no flag, so fastobs's own default applies. */}}
{{- define "fastobs.flag" -}}
{{- if not (or (kindIs "invalid" .value) (eq (toString .value) "")) }}
- {{ printf "--%s=%s" .flag (include "fastobs.str" .value) | toJson }}
{{- end }}
{{- end }}

{{/* A value as text; numbers from values files arrive as float64 and must print as integers
(1000000, not 1e+06): every numeric flag of fastobs is an integer. */}}
{{- define "fastobs.str" -}}
{{- if kindIs "float64" . }}{{ int64 . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{- define "fastobs.args" -}}
{{- $r := include "fastobs.resource" . | fromJson }}
{{- $v := .Values }}
- {{ $r.name | toJson }}
{{- if $v.watch.allNamespaces }}
- "--all-namespaces"
{{- else if not $r.clusterScoped }}
- {{ printf "--namespace=%s" (include "fastobs.watchNamespace" .) | toJson }}
{{- end }}
{{- include "fastobs.flag" (dict "flag" "selector" "value" $v.watch.labelSelector) }}
{{- include "fastobs.flag" (dict "flag" "field-selector" "value" $v.watch.fieldSelector) }}
{{- include "fastobs.flag" (dict "flag" "resync-period" "value" $v.watch.resyncPeriod) }}
{{- include "fastobs.flag" (dict "flag" "watch-read-timeout" "value" $v.watch.readTimeout) }}
{{- include "fastobs.flag" (dict "flag" "template" "value" $v.template.text) }}
{{- include "fastobs.flag" (dict "flag" "output" "value" $v.template.output) }}
{{- include "fastobs.flag" (dict "flag" "allow-missing-template-keys" "value" $v.template.allowMissingKeys) }}
{{- include "fastobs.flag" (dict "flag" "type-env-var" "value" $v.events.typeEnvVar) }}
{{- include "fastobs.flag" (dict "flag" "object-env-var" "value" $v.events.objectEnvVar) }}
{{- include "fastobs.flag" (dict "flag" "object-channel" "value" $v.events.objectChannel) }}
{{- include "fastobs.flag" (dict "flag" "object-file-env-var" "value" $v.events.objectFileEnvVar) }}
{{- range $v.delete.command }}
- {{ printf "--delete=%s" (include "fastobs.str" .) | toJson }}
{{- end }}
{{- range $v.names.command }}
- {{ printf "--names=%s" (include "fastobs.str" .) | toJson }}
{{- end }}
- {{ printf "--workers=%s" (include "fastobs.str" $v.engine.workers) | toJson }}
{{- include "fastobs.flag" (dict "flag" "concurrency" "value" $v.engine.concurrency) }}
{{- if not $v.engine.coalesce }}
- "--no-coalesce"
{{- end }}
{{- include "fastobs.flag" (dict "flag" "timeout" "value" $v.engine.timeout) }}
{{- include "fastobs.flag" (dict "flag" "max-pending" "value" $v.engine.maxPending) }}
{{- include "fastobs.flag" (dict "flag" "maximum-errors" "value" $v.engine.maximumErrors) }}
{{- include "fastobs.flag" (dict "flag" "retry-on-exit-code" "value" $v.engine.retry.onExitCode) }}
{{- include "fastobs.flag" (dict "flag" "retry-count" "value" $v.engine.retry.count) }}
{{- include "fastobs.flag" (dict "flag" "backoff-base" "value" $v.engine.backoff.base) }}
{{- include "fastobs.flag" (dict "flag" "backoff-cap" "value" $v.engine.backoff.cap) }}
{{- include "fastobs.flag" (dict "flag" "backoff-attempts" "value" $v.engine.backoff.attempts) }}
{{- include "fastobs.flag" (dict "flag" "output-mode" "value" $v.engine.outputMode) }}
{{- if $v.engine.quiet }}
- "--quiet"
{{- end }}
- {{ printf "--shutdown-grace=%ss" (include "fastobs.str" $v.shutdown.graceSeconds) | toJson }}
- {{ printf "--kill-grace=%ss" (include "fastobs.str" $v.shutdown.killGraceSeconds) | toJson }}
- {{ printf "--listen-addr=:%s" (include "fastobs.str" $v.metrics.port) | toJson }}
- {{ printf "--log-format=%s" $v.logging.format | toJson }}
- {{ printf "--log-level=%s" $v.logging.level | toJson }}
{{- if include "fastobs.group" . }}
{{- include "fastobs.groupArgs" . }}
{{- end }}
{{- range $v.extraArgs }}
- {{ tpl (include "fastobs.str" .) $ | toJson }}
{{- end }}
{{- with $v.command }}
- "--"
{{- range . }}
- {{ include "fastobs.str" . | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* The script volume: a chart-made ConfigMap, an existing one, or none (baked into the image). */}}
{{- define "fastobs.scriptConfigMap" -}}
{{- if and .Values.script.files .Values.script.existingConfigMap }}
{{- fail "script.files and script.existingConfigMap are mutually exclusive: ship the script one way" }}
{{- end }}
{{- if .Values.script.files }}
{{- printf "%s-scripts" (include "fastobs.fullname" .) }}
{{- else }}
{{- .Values.script.existingConfigMap }}
{{- end }}
{{- end }}

{{/* Seconds the kubelet waits after SIGTERM: fastobs's drain, its kill grace, and 5 s to exit. */}}
{{- define "fastobs.terminationGracePeriodSeconds" -}}
{{- add (int64 .Values.shutdown.graceSeconds) (int64 .Values.shutdown.killGraceSeconds) 5 }}
{{- end }}

{{/* A group of replicas ------------------------------------------------------------------
"true" when the pods share the resource through Leases: group.enabled, or by default more
than one replica. More than one pod outside a group would run every command twice. */}}
{{- define "fastobs.group" -}}
{{- $enabled := .Values.group.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- if gt (int64 .Values.replicas) 1 }}true{{ end }}
{{- else if $enabled }}true
{{- else if gt (int64 .Values.replicas) 1 }}
{{- fail "replicas > 1 needs group.enabled true or null: pods outside a group would each run every command" }}
{{- end }}
{{- end }}

{{- define "fastobs.leaseName" -}}
{{- .Values.group.leaseName | default (include "fastobs.fullname" .) }}
{{- end }}

{{/* The group's flags: every pod is its own identity (its pod name, from the downward API). */}}
{{- define "fastobs.groupArgs" -}}
{{- $g := .Values.group }}
- {{ printf "--lease-name=%s" (include "fastobs.leaseName" .) | toJson }}
- {{ printf "--lease-namespace=%s" .Release.Namespace | toJson }}
- "--identity=$(POD_NAME)"
- {{ printf "--buckets=%s" (include "fastobs.str" $g.buckets) | toJson }}
{{- include "fastobs.flag" (dict "flag" "shard-key" "value" $g.shardKey) }}
{{- include "fastobs.flag" (dict "flag" "shard-filter" "value" $g.shardFilter) }}
{{- include "fastobs.flag" (dict "flag" "lease-duration" "value" $g.leaseDuration) }}
{{- include "fastobs.flag" (dict "flag" "renew-deadline" "value" $g.renewDeadline) }}
{{- include "fastobs.flag" (dict "flag" "retry-period" "value" $g.retryPeriod) }}
{{- include "fastobs.flag" (dict "flag" "lease-kill-grace" "value" $g.leaseKillGrace) }}
{{- include "fastobs.flag" (dict "flag" "drain-timeout" "value" $g.drainTimeout) }}
{{- if $g.resyncOnStart }}
- "--resync-on-start"
{{- end }}
{{- end }}

{{/* Recreate for one pod (never two at once); in a group, a rolling update: the new pod joins
and takes its share before the old one hands its share over. */}}
{{- define "fastobs.strategy" -}}
{{- $group := include "fastobs.group" . }}
{{- $s := .Values.strategy }}
{{- if and (eq (toString $s.type) "RollingUpdate") (not $group) }}
{{- fail "strategy RollingUpdate needs a group of replicas (group.enabled): outside a group, two pods at once would run every command twice" }}
{{- end }}
{{- if $s }}
{{- toYaml $s }}
{{- else if $group }}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- else }}
type: Recreate
{{- end }}
{{- end }}
