{{/* The chart name, overridable. */}}
{{- define "healthscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name of every object: the release name if it already says healthscope. */}}
{{- define "healthscope.fullname" -}}
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

{{- define "healthscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "healthscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "healthscope.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "healthscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: healthscope
{{- end }}

{{- define "healthscope.tlsSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "healthscope.fullname" .)) .Values.certificate.secretName }}
{{- end }}

{{- define "healthscope.certificateName" -}}
{{- printf "%s-webhook" (include "healthscope.fullname" .) }}
{{- end }}

{{- define "healthscope.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "healthscope.fullname" .) }}
{{- end }}

{{/* clientConfig of every webhook: the Service, the path, and the CA in selfSigned mode. */}}
{{- define "healthscope.clientConfig" -}}
{{- $root := index . 0 }}
{{- $path := index . 1 -}}
{{- if $root.Values.webhook.urlBase -}}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.urlBase) $path | quote }}
{{- else -}}
service:
  name: {{ include "healthscope.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ $path }}
  port: {{ $root.Values.service.webhookPort }}
{{- end }}
{{- if eq $root.Values.certificate.mode "selfSigned" }}
caBundle: {{ $root.Values.certificate.caBundle | b64enc | quote }}
{{- end }}
{{- end }}

{{/* The same settings on every webhook. */}}
{{- define "healthscope.webhookCommon" -}}
admissionReviewVersions: [v1]
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
namespaceSelector:
  {{- with .Values.webhook.namespaceSelectorLabels }}
  matchLabels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- range (concat (list "kube-system" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq) }}
        - {{ . | quote }}
        {{- end }}
{{- end }}

{{/* Annotations of the webhook configurations: cert-manager's CA injection. */}}
{{- define "healthscope.webhookAnnotations" -}}
{{- if eq .Values.certificate.mode "certManager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "healthscope.certificateName" .) }}
{{- end }}
{{- end }}
