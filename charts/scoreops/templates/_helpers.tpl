{{/* Chart name, overridable. */}}
{{- define "scoreops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the operator's objects: RELEASE-scoreops, or RELEASE when it already
     contains the chart name. */}}
{{- define "scoreops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "scoreops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels selecting the operator's pods: stable across upgrades. */}}
{{- define "scoreops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scoreops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object. */}}
{{- define "scoreops.labels" -}}
helm.sh/chart: {{ include "scoreops.chart" . }}
app.kubernetes.io/name: {{ include "scoreops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scoreops
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "scoreops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "scoreops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The tag of every scoreops image: images.tag or the chart's appVersion. */}}
{{- define "scoreops.imageTag" -}}
{{- default .Chart.AppVersion .Values.images.tag -}}
{{- end -}}

{{/* image REPO_OVERRIDE TAG_OVERRIDE COMPONENT: REGISTRY/COMPONENT:TAG unless overridden. */}}
{{- define "scoreops.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $component := index . 2 -}}
{{- $repo := default (printf "%s/%s" (trimSuffix "/" $root.Values.images.registry) $component) $img.repository -}}
{{- $tag := default (include "scoreops.imageTag" $root) $img.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* true when the operator watches only the namespaces in operator.watchNamespaces. */}}
{{- define "scoreops.namespaced" -}}
{{- if .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* The rules the operator needs in every namespace it watches. Least privilege: named
     groups, resources and verbs only; Secrets only when rbac.readSecrets is on. */}}
{{- define "scoreops.namespacedRules" -}}
# the three kinds: watch, and patch for kopf's progress annotations and finalizers
- apiGroups: ["scoreops.io"]
  resources: ["scoreruns", "evalsuites", "correctorservices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["scoreops.io"]
  resources: ["scoreruns/status", "evalsuites/status", "correctorservices/status"]
  verbs: ["get", "patch"]
# owner references with blockOwnerDeletion on the children
- apiGroups: ["scoreops.io"]
  resources: ["scoreruns/finalizers", "evalsuites/finalizers", "correctorservices/finalizers"]
  verbs: ["update"]
# the children, server-side applied and watched; they go away with their owner through
# owner references, so the operator never deletes one itself
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# the predictors' storage ServiceAccounts (<correctorservice>-storage): server-side applied,
# never read back or deleted (they go with their owner); they list the S3 Secret by name and
# hold no role, so creating them grants nothing
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch"]
# kopf posts Kubernetes events about handler progress and errors
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.readSecrets }}
# rbac.readSecrets: read (never list or write) Secrets named by the resources
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end -}}
