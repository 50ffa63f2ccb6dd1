{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "chexvision.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already holds the chart's. */}}
{{- define "chexvision.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := .Values.nameOverride | default .Chart.Name }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "chexvision.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "chexvision.labels" -}}
helm.sh/chart: {{ include "chexvision.chart" . }}
app.kubernetes.io/name: {{ include "chexvision.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chexvision
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The services, in pipeline order, and what differs between them. Every
per-service template ranges over this list; `dict "root" $ "name" NAME`
is the argument of the helpers below.
*/}}
{{- define "chexvision.services" -}}
ingest preprocess trainer evaluator inference
{{- end }}

{{/* <fullname>-<component>, for every object of a service (or the topic Job). */}}
{{- define "chexvision.componentName" -}}
{{- printf "%s-%s" (include "chexvision.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What a service's selectors match: stable across upgrades. */}}
{{- define "chexvision.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chexvision.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "chexvision.componentLabels" -}}
{{ include "chexvision.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* <registry>/<repository>:<tag>; tag: the service's, the chart-wide one, or appVersion. */}}
{{- define "chexvision.image" -}}
{{- $root := .root }}
{{- $tag := .image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- if $root.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The priority class the chart creates. */}}
{{- define "chexvision.priorityClassName" -}}
{{- .Values.priorityClass.name | default (printf "%s-training" (include "chexvision.fullname" .)) }}
{{- end }}

{{/*
The config file a service reads (--config): its file from configs/ with the
release's config values on top. Rendered into the ConfigMap as
release-<name>.yaml; `base` is the configs/ file it inherits from.
*/}}
{{- define "chexvision.releaseConfig" -}}
{{- $values := deepCopy (.root.Values.config | default dict) }}
{{- with .overrides }}
{{- $values = mergeOverwrite $values (deepCopy .) }}
{{- end }}
{{- with .root.Values.kafka.properties }}
{{- $values = mergeOverwrite $values (dict "kafka" (dict "properties" .)) }}
{{- end }}
# Rendered by the chart: {{ .base }} with the release's `config` values
# (the container's CHEXVISION_* variables override both).
inherits: {{ .base }}
{{- if $values }}
{{ toYaml $values }}
{{- end }}
{{- end }}

{{/* Environment every container shares: where Kafka and S3 are, and their secrets. */}}
{{- define "chexvision.sharedEnv" -}}
{{- $v := .Values }}
- name: CHEXVISION_BUS
  value: {{ printf "kafka://%s" $v.kafka.bootstrapServers | quote }}
- name: CHEXVISION_STORE
  value: {{ $v.store.uri | quote }}
- name: CHEXVISION_KAFKA__PARTITIONS
  value: {{ $v.kafka.partitions | quote }}
- name: CHEXVISION_KAFKA__REPLICATION_FACTOR
  value: {{ $v.kafka.replicationFactor | quote }}
- name: CHEXVISION_S3__REGION
  value: {{ $v.s3.region | quote }}
{{- with $v.s3.endpoint }}
- name: CHEXVISION_S3__ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if ne $v.s3.addressing "auto" }}
- name: CHEXVISION_S3__PATH_STYLE
  value: {{ eq $v.s3.addressing "path" | quote }}
{{- end }}
{{- with $v.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3.secretAccessKeyKey }}
{{- end }}
{{- with $v.kafka.sasl.existingSecret }}
- name: CHEXVISION_KAFKA__PROPERTIES__sasl.username
{{- if $v.kafka.sasl.username }}
  value: {{ $v.kafka.sasl.username | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.kafka.sasl.usernameKey }}
{{- end }}
- name: CHEXVISION_KAFKA__PROPERTIES__sasl.password
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.kafka.sasl.passwordKey }}
{{- end }}
{{- if $v.kafka.tls.existingSecret }}
- name: CHEXVISION_KAFKA__PROPERTIES__ssl.ca.location
  value: {{ printf "/etc/chexvision-secrets/kafka-ca/%s" $v.kafka.tls.caKey | quote }}
{{- end }}
{{- end }}

{{/* Volumes every pod shares: the configs, /tmp, the Kafka CA. */}}
{{- define "chexvision.sharedVolumes" -}}
- name: config
  configMap:
    name: {{ include "chexvision.fullname" .root }}-config
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
{{- with .root.Values.kafka.tls.existingSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.root.Values.kafka.tls.caKey }}
        path: {{ $.root.Values.kafka.tls.caKey }}
{{- end }}
{{- end }}

{{- define "chexvision.sharedVolumeMounts" -}}
- name: config
  mountPath: /etc/chexvision
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-ca
  mountPath: /etc/chexvision-secrets/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod-level hardening: non-root, the runtime's seccomp profile, no API token. */}}
{{- define "chexvision.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level hardening: read-only root, no privilege escalation, no capabilities. */}}
{{- define "chexvision.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
