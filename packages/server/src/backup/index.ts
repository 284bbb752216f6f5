/** Encrypted backups, restore and exports (docs/ARCHITECTURE.md, "Backups, restore and exports"). */
import type { Kms } from '../kms/kms.js';
import { openKms, readConfig } from '../service/data-dir.js';

export {
  ARCHIVE_MAGIC,
  ARCHIVE_VERSION,
  type ArchiveFile,
  type ArchiveHeader,
  type ArchiveKeySource,
  type ArchiveKind,
  archiveKeyContext,
  archiveLength,
  DEFAULT_SEGMENT_SIZE,
  formatRecoveryKey,
  type NewArchive,
  type NewArchiveOptions,
  newArchive,
  newRecoveryKey,
  openArchiveKey,
  openSegments,
  parseRecoveryKey,
  RECOVERY_KEY_LEN,
  readArchiveHeader,
  segmentCount,
} from './archive.js';
export {
  BACKUP_ENTRIES,
  type BackupOptions,
  type PreparedArchive,
  prepareBackup,
  snapshotDatabase,
} from './backup.js';
export {
  buildExport,
  EXPORT_PARTS,
  type ExportOptions,
  type ExportPart,
  prepareExport,
  readExport,
} from './export.js';
export {
  checkRestoreTarget,
  type RestoreOptions,
  type RestoreResult,
  type RestoreTargetKms,
  restoreBackup,
} from './restore.js';

/** Opens the KMS a data directory's config names (to read its archives offline). */
export async function openDataDirKms(dataDir: string): Promise<Kms> {
  return openKms(readConfig(dataDir).kmsSetting);
}
