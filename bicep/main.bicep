// BitNet b1.58 on Azure Functions Flex Consumption (Linux, custom handler), scale to zero.
//
//   az deployment group create -g <rg> -f bicep/main.bicep -p modelSha256=<hex> apiKey=<secret>
//     (or apiKey='' allowNoAuth=true to rely on the function keys alone)
//   infra/package-azure.sh      # -> target-azure/app.zip
//   az functionapp deploy -g <rg> -n <functionAppName> --src-path target-azure/app.zip --type zip
//
// Nothing here is billed while idle: Flex Consumption with no always-ready
// instances, a pay-per-GB workspace, and storage for the package and the model.

@description('Base name of the resources (letters and digits; the storage account name is derived from it).')
@minLength(3)
@maxLength(16)
param name string = 'bitnet'

@description('Azure region. Flex Consumption is available in a subset of regions.')
param location string = resourceGroup().location

@description('Upper bound of instances the app may scale out to (Flex Consumption: 1-1000).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 10

@description('Sequences one instance generates at once (BITNET_PARALLEL), batched into one forward pass; requests beyond them wait in a short queue, then get 429. The 4096 MB instance holds the 1.2 GB model in memory; the KV cache budget is derived from what is left (a request whose KV does not fit waits). About 2 per 2048 MB of instance memory.')
@minValue(1)
@maxValue(64)
param parallel int = 4

@description('HTTP requests the Flex host sends to one instance at once before it scales out (perInstanceConcurrency). Defaults to parallel: every request gets a generation slot at once, and more load starts another instance instead of queueing (or 429) in this one.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = parallel

@description('Name of the model blob inside the models container.')
param modelBlobName string = 'bitnet-2b4t-prepared.gguf'

@description('Expected lowercase hex sha256 of the model (BITNET_MODEL_SHA256). Empty leaves it unset.')
param modelSha256 string = ''

@description('Name of an embedding model blob (bitnet-embedding-0.6b GGUF) in the models container, served beside the chat model for /v1/embeddings (BITNET_EMBEDDING_MODEL), fetched and kept as the chat model is. Empty: no embedding model.')
param embeddingModelBlobName string = ''

@description('Expected lowercase hex sha256 of the embedding model (BITNET_EMBEDDING_MODEL_SHA256). Empty leaves it unset.')
param embeddingModelSha256 string = ''

@description('BITNET_THREADS; 0 leaves it unset (the handler uses all visible cores).')
@minValue(0)
param threads int = 0

@description('Bearer token the HTTP API requires (API_KEY), on top of the function key the host checks. Required: an empty string only together with allowNoAuth=true.')
@secure()
param apiKey string

@description('Explicit opt-in to run the handler without API_KEY (BITNET_ALLOW_NO_AUTH=1), relying on the function keys (authLevel: function) the Functions host checks before the handler. Ignored when apiKey is set. With neither, the handler refuses to start.')
param allowNoAuth bool = false

@description('Retention of the Log Analytics workspace in days.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Tags applied to every resource.')
param tags object = {}

// Flex Consumption: temporary disk is only 0.8 GB, so the 1.19 GB model is held
// in memory; 4096 MB is the only instance size that holds it (2 cores).
var instanceMemoryMB = 4096
var suffix = uniqueString(resourceGroup().id, name)
var storageAccountName = take(toLower('${replace(name, '-', '')}${suffix}'), 24)
var deploymentContainerName = 'app-package'
var modelsContainerName = 'models'
// Containers the Functions host keeps its locks and function keys in (AzureWebJobsStorage).
var hostContainerNames = [
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var modelUri = 'https://${storageAccountName}.blob.${environment().suffixes.storage}/${modelsContainerName}/${modelBlobName}'
var embeddingModelUri = empty(embeddingModelBlobName) ? '' : 'https://${storageAccountName}.blob.${environment().suffixes.storage}/${modelsContainerName}/${embeddingModelBlobName}'

// The runtime identity: what the handler (AZURE_CLIENT_ID) and the Functions host
// (AzureWebJobsStorage) act as. Read on the models container, read/write on the two host
// containers, nothing on the deployment package.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-id'
  location: location
  tags: tags
}

// The deployment identity: only functionAppConfig.deployment.storage authenticates with it.
// `az functionapp deploy` (OneDeploy) has the platform write the package into the
// deployment container as this identity, and the platform reads it from there at each
// start, so it needs write on that one container and nothing else.
resource deployIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-deploy-id'
  location: location
  tags: tags
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: '${name}-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-ai'
  location: location
  kind: 'web'
  tags: tags
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:Default action Deny needs VNet integration or private endpoints, billed by the hour even when idle; access is by Entra ID only (shared keys disabled).
  // checkov:skip=CKV_AZURE_59:Same reason: the Flex Consumption platform pulls the package over the public endpoint unless the app is VNet-integrated; keys are disabled and every grant is scoped to one container.
  // checkov:skip=CKV_AZURE_43:The name is computed (lower-cased base name without '-' plus uniqueString, cut to 24 characters); checkov cannot evaluate the expression.
  // checkov:skip=CKV_AZURE_206:LRS is the cheapest at rest; the package is rebuilt by CI and the model is a sha256-pinned artefact that can be uploaded again.
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

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource modelsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: modelsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource hostContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in hostContainerNames: {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

// The identity may read blobs in the models container and nothing else there.
resource modelsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: modelsContainer
  name: guid(modelsContainer.id, identity.id, storageBlobDataReaderRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReaderRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The platform reads (and az functionapp deploy writes) the package here, as the
// deployment identity. The runtime identity gets no role on this container.
resource deploymentContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: deploymentContainer
  name: guid(deploymentContainer.id, deployIdentity.id, storageBlobDataContributorRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: deployIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The Functions host keeps its locks and function keys in these two containers.
resource hostContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (containerName, i) in hostContainerNames: {
  scope: hostContainers[i]
  name: guid(hostContainers[i].id, identity.id, storageBlobDataContributorRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption exists only in some regions; enable it per deployment where offered. Availability here comes from scaling out on demand.
  name: '${name}-plan'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var baseAppSettings = [
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsights.properties.ConnectionString
  }
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identity.properties.clientId
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.properties.clientId
  }
  {
    name: 'BITNET_MODEL'
    value: modelUri
  }
  {
    name: 'BITNET_MODEL_STORAGE'
    value: 'memory'
  }
  {
    name: 'BITNET_PARALLEL'
    value: string(parallel)
  }
]

var shaSetting = empty(modelSha256) ? [] : [
  {
    name: 'BITNET_MODEL_SHA256'
    value: modelSha256
  }
]

// The embedding model: in the models container the identity already reads.
var embeddingSetting = empty(embeddingModelBlobName) ? [] : [
  {
    name: 'BITNET_EMBEDDING_MODEL'
    value: embeddingModelUri
  }
]

var embeddingShaSetting = (empty(embeddingModelBlobName) || empty(embeddingModelSha256)) ? [] : [
  {
    name: 'BITNET_EMBEDDING_MODEL_SHA256'
    value: embeddingModelSha256
  }
]

var threadsSetting = threads == 0 ? [] : [
  {
    name: 'BITNET_THREADS'
    value: string(threads)
  }
]

var apiKeySetting = empty(apiKey) ? [] : [
  {
    name: 'API_KEY'
    value: apiKey
  }
]

// Only on explicit opt-in, and only without a key.
var noAuthSetting = (empty(apiKey) && allowNoAuth) ? [
  {
    name: 'BITNET_ALLOW_NO_AUTH'
    value: '1'
  }
] : []

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:This is the public HTTP endpoint of the API (function keys / API_KEY); private access needs VNet integration or private endpoints, billed while idle.
  // checkov:skip=CKV_AZURE_212:A minimum instance count for failover means instances billed while idle; this app scales to zero by design (alwaysReady is empty).
  // checkov:skip=CKV_AZURE_213:App Service health check pings every instance each minute; on a scale-to-zero app that is billed traffic for nothing. Readiness is the host's own startup probe of the handler.
  // checkov:skip=CKV_AZURE_17:Clients are browsers and CLIs; requests are authenticated with function keys and/or API_KEY over HTTPS, not client certificates.
  name: '${name}-func-${suffix}'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
      '${deployIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: deployIdentity.id
          }
        }
      }
      scaleAndConcurrency: {
        // No always-ready instances: nothing runs (or is billed) while idle.
        alwaysReady: []
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(baseAppSettings, shaSetting, embeddingSetting, embeddingShaSetting, threadsSetting, apiKeySetting, noAuthSetting)
    }
  }
  dependsOn: [
    modelsReader
    deploymentContributor
    hostContributor
  ]
}

output functionAppName string = functionApp.name
output functionAppUrl string = 'https://${functionApp.properties.defaultHostName}'
output storageAccountName string = storage.name
output deploymentContainer string = deploymentContainerName
output modelsContainer string = modelsContainerName
output modelUri string = modelUri
output embeddingModelUri string = embeddingModelUri
output identityClientId string = identity.properties.clientId
output deploymentIdentityClientId string = deployIdentity.properties.clientId
