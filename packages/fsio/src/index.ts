export {
  AlignedPool,
  alignedBuffer,
  alignUp,
  DIRECT_IO_ALIGN,
  DirectFile,
  isAligned,
  isAlignedView,
  openDirect,
} from './direct-io.js';
