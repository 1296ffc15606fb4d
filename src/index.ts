// The package root: what `import … from 'xdevice'` gives an application —
// the client library (open a replicated device by name against a cluster's
// NBD endpoints; see src/client/device.ts) and the package version.
export {
  openDevice,
  Device,
  DeviceError,
  DeviceUnavailableError,
  WriteOutcomeUnknownError,
  DeviceIoError,
  DeviceRangeError,
  DeviceClosedError,
  type OpenDeviceOptions,
  type DeviceErrorCode,
} from './client/device.ts';
export { VERSION } from './version.ts';
