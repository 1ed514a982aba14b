{{/* The release's full name, at most 63 characters. */}}
{{- define "pot.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pot.selectorLabels" -}}
app.kubernetes.io/name: pot-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pot.labels" -}}
{{ include "pot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pot.fullname" .) .Values.serviceAccount.name -}}
{{- else if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else -}}
{{- fail "serviceAccount.name is required when serviceAccount.create is false (the operator's rights must not go to the namespace's default account)" -}}
{{- end -}}
{{- end -}}

{{- define "pot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
