// The package root: what `import … from 'xdevice'` gives an application.
export { VERSION } from './version.ts';
