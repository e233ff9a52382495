// BitNet b1.58 HTTP API on Azure Container Apps, scale to zero.
//
// Replaces the old hand-typed `az containerapp create` (0.25 vCPU / 0.5 GiB,
// 1 GiB local disk), which could not even hold the 1.19 GB model.
//
//   az deployment group create -g <rg> -f bicep/containerapp.bicep \
//     -p containerRegistry=<acr>.azurecr.io image=bitnet-api:<tag> acrName=<acr> modelSha256=<hex> \
//        apiKey=<secret, at least 16 characters>

@description('Base name of the resources (letters and digits; the storage account name is derived from it).')
@minLength(3)
@maxLength(16)
param name string = 'bitnet'

@description('Azure region.')
param location string = resourceGroup().location

@description('Login server of the registry holding the image, e.g. myregistry.azurecr.io.')
param containerRegistry string

@description('Image name and tag inside that registry, e.g. bitnet-api:0.1.0.')
param image string

@description('Name of an Azure Container Registry in this resource group to grant AcrPull on; empty when the registry needs no credentials.')
param acrName string = ''

@description('Maximum replicas. Minimum is always 0 (scale to zero).')
@minValue(1)
@maxValue(300)
param maxReplicas int = 2

@description('vCPU per replica (2 vCPU / 4 GiB: 8 GiB of local disk, room for the 1.19 GB model).')
param cpu string = '2.0'

@description('Memory per replica; Container Apps requires 2 GiB per vCPU.')
param memory string = '4Gi'

@description('Sequences one replica generates at once (BITNET_PARALLEL), batched into one forward pass; requests beyond them wait in a short queue, then get 429.')
@minValue(1)
@maxValue(64)
param parallel int = 4

@description('Concurrent HTTP requests per replica before the HTTP scale rule starts another replica (concurrentRequests). Defaults to parallel: every request gets a generation slot at once, and more load scales out instead of queueing in one replica.')
@minValue(1)
param httpConcurrency int = parallel

@description('Name of the model blob inside the models container.')
param modelBlobName string = 'bitnet-2b4t-prepared.gguf'

@description('Expected lowercase hex sha256 of the model (BITNET_MODEL_SHA256). Empty leaves it unset.')
param modelSha256 string = ''

@description('Name of an embedding model blob (bitnet-embedding-0.6b GGUF) in the models container, served beside the chat model for /v1/embeddings (BITNET_EMBEDDING_MODEL), fetched and kept as the chat model is. Empty: no embedding model.')
param embeddingModelBlobName string = ''

@description('Expected lowercase hex sha256 of the embedding model (BITNET_EMBEDDING_MODEL_SHA256). Empty leaves it unset.')
param embeddingModelSha256 string = ''

@description('BITNET_THREADS; 0 leaves it unset (the server uses all visible cores).')
@minValue(0)
param threads int = 0

@description('Bearer token the HTTP API requires (API_KEY), stored as a Container Apps secret. Required: the ingress is public and nothing else checks callers (the image serves on 0.0.0.0, which it refuses to do without a key).')
@secure()
@minLength(16)
param apiKey string

@description('Retention of the Log Analytics workspace in days.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Tags applied to every resource.')
param tags object = {}

var minReplicas = 0
var targetPort = 8080
var suffix = uniqueString(resourceGroup().id, name)
var storageAccountName = take(toLower('${replace(name, '-', '')}ca${suffix}'), 24)
var modelsContainerName = 'models'
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var modelUri = 'https://${storageAccountName}.blob.${environment().suffixes.storage}/${modelsContainerName}/${modelBlobName}'
var embeddingModelUri = empty(embeddingModelBlobName) ? '' : 'https://${storageAccountName}.blob.${environment().suffixes.storage}/${modelsContainerName}/${embeddingModelBlobName}'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-ca-id'
  location: location
  tags: tags
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: '${name}-ca-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:Default action Deny needs a VNet-integrated environment or private endpoints, billed by the hour even when idle; access is by Entra ID only (shared keys disabled).
  // checkov:skip=CKV_AZURE_59:Same reason: replicas reach the models container over the public endpoint; keys are disabled and the only grant is read on one container.
  // checkov:skip=CKV_AZURE_43:The name is computed (lower-cased base name without '-' plus uniqueString, cut to 24 characters); checkov cannot evaluate the expression.
  // checkov:skip=CKV_AZURE_206:LRS is the cheapest at rest; the model is a sha256-pinned artefact that can be uploaded again.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource modelsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: modelsContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The identity may read blobs in the models container and nothing else.
resource modelsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: modelsContainer
  name: guid(modelsContainer.id, identity.id, storageBlobDataReaderRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReaderRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource acr 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = if (!empty(acrName)) {
  name: acrName
}

resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(acrName)) {
  scope: acr
  name: guid(resourceGroup().id, acrName, identity.id, acrPullRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource managedEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${name}-env'
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    // Consumption profile only: billed per second of replica time, nothing at zero replicas.
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

var baseEnv = [
  {
    name: 'BITNET_MODEL'
    value: modelUri
  }
  {
    name: 'BITNET_MODEL_STORAGE'
    value: 'disk'
  }
  {
    name: 'BITNET_CACHE_DIR'
    value: '/tmp/bitnet-models'
  }
  {
    name: 'BITNET_PARALLEL'
    value: string(parallel)
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.properties.clientId
  }
]

var shaEnv = empty(modelSha256) ? [] : [
  {
    name: 'BITNET_MODEL_SHA256'
    value: modelSha256
  }
]

// The embedding model: in the models container the identity already reads.
var embeddingEnv = empty(embeddingModelBlobName) ? [] : [
  {
    name: 'BITNET_EMBEDDING_MODEL'
    value: embeddingModelUri
  }
]

var embeddingShaEnv = (empty(embeddingModelBlobName) || empty(embeddingModelSha256)) ? [] : [
  {
    name: 'BITNET_EMBEDDING_MODEL_SHA256'
    value: embeddingModelSha256
  }
]

var threadsEnv = threads == 0 ? [] : [
  {
    name: 'BITNET_THREADS'
    value: string(threads)
  }
]

var apiKeyEnv = [
  {
    name: 'API_KEY'
    secretRef: 'api-key'
  }
]

var apiKeySecret = [
  {
    name: 'api-key'
    value: apiKey
  }
]

resource containerApp 'Microsoft.App/containerApps@2024-03-01' = {
  name: '${name}-api'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: managedEnvironment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: targetPort
        transport: 'auto'
        allowInsecure: false
      }
      registries: empty(acrName) ? [] : [
        {
          server: containerRegistry
          identity: identity.id
        }
      ]
      secrets: apiKeySecret
    }
    template: {
      containers: [
        {
          name: 'bitnet-api'
          image: '${containerRegistry}/${image}'
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat(baseEnv, shaEnv, embeddingEnv, embeddingShaEnv, threadsEnv, apiKeyEnv)
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/health'
                port: targetPort
              }
              initialDelaySeconds: 5
              periodSeconds: 10
              failureThreshold: 3
            }
            {
              // Not ready until the model is downloaded, verified and loaded.
              type: 'Readiness'
              httpGet: {
                path: '/ready'
                port: targetPort
              }
              initialDelaySeconds: 2
              periodSeconds: 5
              failureThreshold: 3
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: string(httpConcurrency)
              }
            }
          }
        ]
      }
    }
  }
  dependsOn: [
    modelsReader
    acrPull
  ]
}

output containerAppName string = containerApp.name
output url string = 'https://${containerApp.properties.configuration.ingress.fqdn}'
output storageAccountName string = storage.name
output modelsContainer string = modelsContainerName
output modelUri string = modelUri
output embeddingModelUri string = embeddingModelUri
output identityClientId string = identity.properties.clientId
