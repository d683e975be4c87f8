-- Argo CD health for apps/Deployment, aware of Sluice.
--
-- A Deployment annotated `sluice.dev/canary: enabled` is released by Sluice:
-- its health is the release's, from the phase Sluice mirrors on it
-- (`sluice.dev/phase`, `sluice.dev/message`), as Argo CD shows a Rollout:
--   Initializing, Progressing, Promoting, Finalising -> Progressing
--   WaitingPromotion (manual approval)               -> Suspended
--   Initialized, Succeeded                           -> Healthy
--   Failed (rolled back; stable serves)              -> Degraded
-- Any other Deployment gets the usual rules: Suspended while paused,
-- Degraded past its progress deadline, Progressing until every replica is
-- updated and available, Healthy after.
local hs = {}
local meta = obj.metadata or {}
local annotations = meta.annotations or {}

if annotations["sluice.dev/canary"] == "enabled" then
  local phase = annotations["sluice.dev/phase"]
  local message = annotations["sluice.dev/message"] or ""
  if phase == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for Sluice to take the Deployment on"
    return hs
  end
  if phase == "Failed" then
    hs.status = "Degraded"
  elseif phase == "Initialized" or phase == "Succeeded" then
    hs.status = "Healthy"
  elseif phase == "WaitingPromotion" then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  if message ~= "" then
    hs.message = "Sluice " .. phase .. ": " .. message
  else
    hs.message = "Sluice " .. phase
  end
  return hs
end

local spec = obj.spec or {}
local status = obj.status or {}
if spec.paused == true then
  hs.status = "Suspended"
  hs.message = "Deployment is paused"
  return hs
end
if (meta.generation or 0) > (status.observedGeneration or 0) then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: observed deployment generation less than desired generation"
  return hs
end
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded" then
    hs.status = "Degraded"
    hs.message = "Deployment " .. (meta.name or "") .. " has exceeded its progress deadline"
    return hs
  end
end
local wanted = spec.replicas
if wanted == nil then
  wanted = 1
end
local updated = status.updatedReplicas or 0
local replicas = status.replicas or 0
local available = status.availableReplicas or 0
if updated < wanted then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: " .. updated .. " out of " .. wanted .. " new replicas have been updated..."
elseif replicas > updated then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: " .. (replicas - updated) .. " old replicas are pending termination..."
elseif available < updated then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: " .. available .. " of " .. updated .. " updated replicas are available..."
else
  hs.status = "Healthy"
  hs.message = ""
end
return hs
