{{/* Chart name. */}}
{{- define "previewdb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name (release-scoped). */}}
{{- define "previewdb.fullname" -}}
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

{{- define "previewdb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "previewdb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "previewdb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "previewdb.labels" -}}
helm.sh/chart: {{ include "previewdb.chart" . }}
{{ include "previewdb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "previewdb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "previewdb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The server image: repository@digest when image.digest is set, else repository:tag. */}}
{{- define "previewdb.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Label matchers picking this release's series in PromQL (prometheusRule.selector). */}}
{{- define "previewdb.promSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "namespace=%q, job=%q" .Release.Namespace (include "previewdb.fullname" .)) }}
{{- end }}

{{/* Labels of the chart's own client pods (sweep CronJob, helm test), let through the NetworkPolicy. */}}
{{- define "previewdb.clientLabel" -}}
app.kubernetes.io/part-of: {{ include "previewdb.fullname" . }}-clients
{{- end }}

{{/* Name of the Secret handed to the container via envFrom, or "" when there is none. */}}
{{- define "previewdb.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.create }}
{{- include "previewdb.fullname" . }}
{{- end }}
{{- end }}

{{/* Container port: the port of config.listen, or service.targetPort with configToml. */}}
{{- define "previewdb.containerPort" -}}
{{- if .Values.configToml }}
{{- .Values.service.targetPort }}
{{- else }}
{{- $listen := default "0.0.0.0:8080" .Values.config.listen | toString }}
{{- $port := splitList ":" $listen | last }}
{{- if not (regexMatch "^[0-9]+$" $port) }}
{{- fail (printf "config.listen: %q must end in :PORT" $listen) }}
{{- end }}
{{- $port }}
{{- end }}
{{- end }}

{{/* Directory holding previewdb.toml; relative blueprint paths resolve against it. */}}
{{- define "previewdb.configDir" -}}/etc/previewdb{{- end }}

{{/*
TOML rendering of a values map.
  previewdb.toml.table  (dict "prefix" "a.b" "table" MAP)
Within a table, plain keys come first (a TOML header captures every key after it), then
sub-tables as [prefix.key] and lists of maps as [[prefix.key]]. Null values are skipped, so
a default can be removed with `key: null`. Map keys iterate sorted, so output is stable.
*/}}
{{- define "previewdb.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "previewdb.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{/* "true" when a table has a key that is not itself a table (so it needs its own [header]). */}}
{{- define "previewdb.toml.hasPlainKeys" -}}
{{- range $k, $v := . }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "previewdb.toml.isTableArray" $v)) }}true{{ end }}
{{- end }}
{{- end }}

{{- define "previewdb.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "previewdb.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" . }}{ {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "previewdb.toml.key" $k }} = {{ include "previewdb.toml.value" (get $ $k) }}{{ end }} }
{{- else if kindIs "float64" . }}{{ if eq . (floor .) }}{{ int64 . }}{{ else }}{{ toJson . }}{{ end }}
{{- else }}{{ toJson . }}
{{- end }}
{{- end }}

{{- define "previewdb.toml.table" -}}
{{- $prefix := .prefix }}
{{- $t := .table }}
{{- range $k, $v := $t }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "previewdb.toml.isTableArray" $v)) }}
{{ include "previewdb.toml.key" $k }} = {{ include "previewdb.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $t }}
{{- $path := include "previewdb.toml.key" $k }}
{{- if $prefix }}{{ $path = printf "%s.%s" $prefix $path }}{{ end }}
{{- if kindIs "map" $v }}
{{- if or (empty $v) (include "previewdb.toml.hasPlainKeys" $v) }}

[{{ $path }}]
{{- end }}
{{- include "previewdb.toml.table" (dict "prefix" $path "table" $v) }}
{{- else if include "previewdb.toml.isTableArray" $v }}
{{- range $e := $v }}

[[{{ $path }}]]
{{- include "previewdb.toml.table" (dict "prefix" $path "table" $e) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The whole previewdb.toml. */}}
{{- define "previewdb.configToml" -}}
{{- if .Values.configToml }}
{{- .Values.configToml }}
{{- else }}
{{- "# Rendered by the previewdb Helm chart from .Values.config." }}
{{- include "previewdb.toml.table" (dict "prefix" "" "table" .Values.config) }}
{{ end }}
{{- end }}
