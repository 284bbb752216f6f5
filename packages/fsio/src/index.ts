export { chunkedBody } from './chunked-body.js';
export {
  AlignedPool,
  alignedBuffer,
  alignUp,
  DIRECT_IO_ALIGN,
  DirectFile,
  isAligned,
  isAlignedView,
} from './direct-io.js';
